"""Training curves drawn in a recorded terminal: loss first, numeric metrics after, text values listed."""

from __future__ import annotations

from rich.console import Console

from mqfleet.cli.render.chart import CHART_ROWS, progress_charts, series_of
from mqfleet.wire.replies import ProgressPoint


def _history(n: int, attempt: int = 1) -> list[ProgressPoint]:
    return [ProgressPoint(attempt=attempt, seq=i, ts=float(i),
                          report={"epoch": i, "loss": 1.0 / i, "metrics": {"acc": 1 - 1.0 / (i + 1), "phase": "warmup"}})
            for i in range(1, n + 1)]


def test_curves_use_the_epoch_as_x_and_keep_non_numeric_values_as_text() -> None:
    curves, texts, x_label = series_of([h.report for h in _history(5)])
    assert x_label == "epoch"
    assert curves["loss"][0] == (1.0, 1.0) and curves["loss"][-1] == (5.0, 0.2)
    assert set(curves) == {"loss", "acc"} and texts == {"phase": "warmup"}


def test_the_latest_attempt_is_drawn_as_area_charts_in_a_captured_terminal() -> None:
    console = Console(width=90, record=True, color_system=None)
    chart = progress_charts(_history(3, attempt=1) + _history(40, attempt=2), width=86)
    assert chart is not None
    console.print(chart)
    text = console.export_text()
    assert "progress of attempt 2" in text
    assert text.index("loss") < text.index("acc"), "loss comes first"
    assert "(40 points)" in text and "phase=warmup" in text
    rows = [line for line in text.splitlines() if "┤" in line]
    assert len(rows) == 2 * CHART_ROWS
    top_of_loss = rows[0].split("┤", 1)[1]
    assert top_of_loss[0] != " " and top_of_loss.rstrip("│ ").strip() != "", "the first epoch is the loss's peak"
    chart_width = 86 - 10 - 8  # progress_charts' width less the axis labels and margins
    assert top_of_loss[chart_width - 1] == " ", "the loss falls: the top row is empty at the right end"
    assert set(rows[CHART_ROWS - 1].split("┤", 1)[1].rstrip("│ ")) <= set("▁▂▃▄▅▆▇█"), "the bottom row has no holes"


def test_no_history_and_no_numbers_draw_nothing() -> None:
    assert progress_charts([], width=80) is None
    assert progress_charts([ProgressPoint(attempt=1, seq=1, ts=0.0, report={"progress": 0.5})], width=80) is None
