"""Training curves in the terminal: the loss and every numeric metric of an attempt's progress history,
drawn by `show` as small area charts of block characters with rich.

Pure rendering, like cli/render/fleet.py: progress reports (free-form JSON a trainer wrote) in, a rich renderable out. Values that are not finite
numbers are left out of the curves and listed as text under them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.text import Text

from mqfleet.cli.render.terminal import clean

if TYPE_CHECKING:
    # annotations only: a renderer loads no wire module the command has not loaded (docs/BENCHMARKS.md, "CLI start-up")
    from mqfleet.wire.replies import ProgressPoint
    from mqfleet.wire.topics import JsonObject, JsonValue

#: Rows of one chart, and the glyphs that split a row into eighths.
CHART_ROWS = 8
_EIGHTHS = " ▁▂▃▄▅▆▇█"
#: Curves drawn at most (loss first, then metrics by name); more are summarised as text.
MAX_CHARTS = 6
#: Keys of a report that are positions, not curves.
_POSITION_KEYS = ("epoch", "step", "progress")
_AXIS_WIDTH = 10


def _is_number(value: JsonValue) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series_of(reports: Sequence[JsonObject]) -> tuple[dict[str, list[tuple[float, float]]], dict[str, str], str]:
    """(name -> [(x, y)], name -> latest text value, x label) from progress reports, oldest first.

    x is the report's `epoch` (or `step`) when every report has a numeric one, else its position.
    Curves: `loss`, other numeric top-level keys, and numeric `metrics` entries (named as is).
    """
    x_key = next((k for k in ("epoch", "step") if reports and all(_is_number(r.get(k)) for r in reports)), None)
    curves: dict[str, list[tuple[float, float]]] = {}
    texts: dict[str, str] = {}
    for i, report in enumerate(reports):
        position = report.get(x_key) if x_key else None
        x = float(position) if isinstance(position, (int, float)) else float(i + 1)
        values: JsonObject = {k: v for k, v in report.items() if k not in _POSITION_KEYS and k != "metrics"}
        metrics = report.get("metrics")
        if isinstance(metrics, dict):
            values.update(metrics)
        for name, value in values.items():
            if isinstance(value, (int, float)) and _is_number(value):
                curves.setdefault(str(name), []).append((x, float(value)))
            elif isinstance(value, (str, int, float, bool)) or value is None:
                texts[str(name)] = str(value)  # kept as text: the latest one is shown under the charts
    for name in curves:
        texts.pop(name, None)
    return curves, texts, x_key or "report"


def _columns(points: Sequence[tuple[float, float]], width: int) -> list[float | None]:
    """The curve resampled to `width` columns: each column the mean of the points whose x falls in it."""
    xs = [p[0] for p in points]
    lo, hi = min(xs), max(xs)
    if hi == lo:
        return [points[-1][1]] * width if len(points) == 1 else [sum(p[1] for p in points) / len(points)] * width
    sums = [0.0] * width
    counts = [0] * width
    for x, y in points:
        col = min(width - 1, int((x - lo) / (hi - lo) * width))
        sums[col] += y
        counts[col] += 1
    out: list[float | None] = [sums[i] / counts[i] if counts[i] else None for i in range(width)]
    # a column no point fell in takes its left neighbour, so the area has no holes
    last: float | None = None
    for i, v in enumerate(out):
        if v is None:
            out[i] = last
        else:
            last = v
    return out


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def area_chart(name: str, points: Sequence[tuple[float, float]], *, width: int, x_label: str) -> RenderableType:
    """One curve as an area chart CHART_ROWS high and `width` columns wide, with its range and last value."""
    ys = [p[1] for p in points]
    lo, hi = min(ys), max(ys)
    span = hi - lo or 1.0
    cols = _columns(points, width)
    levels = [0 if v is None else round((v - lo) / span * (CHART_ROWS * 8 - 1)) + 1 for v in cols]
    lines = Text()
    for row in range(CHART_ROWS - 1, -1, -1):
        label = _fmt(hi) if row == CHART_ROWS - 1 else (_fmt(lo) if row == 0 else "")
        lines.append(f"{label:>{_AXIS_WIDTH}} ┤", style="dim")
        cells = "".join(_EIGHTHS[max(0, min(8, level - row * 8))] for level in levels)
        lines.append(cells, style="cyan")
        lines.append("\n")
    lines.append(" " * _AXIS_WIDTH + " └" + "─" * width + "\n", style="dim")
    first_x, last_x = _fmt(points[0][0]), f"{_fmt(points[-1][0])} ({x_label})"
    gap = max(1, width - len(first_x) - len(last_x))
    lines.append(" " * (_AXIS_WIDTH + 2) + first_x + " " * gap + last_x, style="dim")
    title = Text.assemble((clean(name), "bold"), f"  last {_fmt(ys[-1])}  min {_fmt(lo)}  max {_fmt(hi)}  "
                         f"({len(points)} point{'' if len(points) == 1 else 's'})")
    return Group(title, lines)


def progress_charts(history: Sequence[ProgressPoint], *, width: int = 80) -> RenderableType | None:
    """The charts of the latest attempt with progress history (`show`'s `progress_history`); None if none."""
    if not history:
        return None
    attempt = max(h.attempt for h in history)
    reports = [h.report for h in history if h.attempt == attempt]
    curves, texts, x_label = series_of(reports)
    if not curves and not texts:
        return None
    names = sorted(curves, key=lambda n: (n != "loss", n))
    chart_width = max(10, width - _AXIS_WIDTH - 8)
    parts: list[RenderableType] = [
        area_chart(n, curves[n], width=chart_width, x_label=x_label) for n in names[:MAX_CHARTS]
    ]
    if len(names) > MAX_CHARTS:
        more = clean(", ".join(f"{n}={_fmt(curves[n][-1][1])}" for n in names[MAX_CHARTS:]))
        parts.append(Text(f"more curves (last values): {more}", style="dim"))
    if texts:
        shown = clean(", ".join(f"{k}={v}" for k, v in sorted(texts.items())))  # written by the trainer
        parts.append(Text("text values (latest): " + shown, style="dim"))
    return Panel(Group(*parts), title=f"progress of attempt {attempt}", title_align="left")
