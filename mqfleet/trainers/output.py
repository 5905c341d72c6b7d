"""What a built-in trainer writes when it is done: `ckpt.json` (what was trained, on what, how well) and the
`report.json`/`report.md` training report, from the `TrainingResult` its body hands over.

Nothing written depends on the clock, the host's paths or the attempt, so one job trained twice on one
machine gives a bit-identical folder, and the store deduplicates it.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mqfleet.trainers.common import TrainerJob, progress_every, write_json

if TYPE_CHECKING:
    from mqfleet.trainers.dataset import Dataset, Split, Task
    from mqfleet.wire.topics import JsonObject


@dataclass(frozen=True)
class TrainingResult:
    """What a trainer body hands to `write_outputs`: the data it used and what came of it."""

    data: Dataset
    split: Split
    task: Task
    model_file: str
    metrics: dict[str, float]
    curve: dict[str, list[float]]  # per round or epoch: "train" and "test" losses
    loss_name: str
    step_name: str  # "round" or "epoch"
    device: Device
    versions: dict[str, str]  # library versions besides python


@dataclass(frozen=True)
class Device:
    """Where a trainer ran, as ckpt.json and report.json record it."""

    kind: str  # cpu or cuda
    name: str  # the GPU's name; "" on the CPU
    threads: int

    def to_json(self) -> JsonObject:
        return {"kind": self.kind, "name": self.name, "threads": self.threads}


def describe_dataset(job: TrainerJob, data: Dataset) -> JsonObject:
    return {
        "path": job.dataset,  # as the job names it: an absolute cwd would differ per host
        "sha256": data.sha256,
        "rows": len(data.y),
        "features": list(data.features),
        "target": data.target,
        "group_column": data.group_column,
    }


def write_outputs(job: TrainerJob, result: TrainingResult) -> None:
    """Write `ckpt.json` and the `report.json`/`report.md` training report to the job's output folder."""
    data, split = result.data, result.split
    split_info: JsonObject = {
        "recipe": split.recipe,
        "n_train": int(len(split.train)),
        "n_test": int(len(split.test)),
        "train_groups": list(split.train_groups),
        "test_groups": list(split.test_groups),
    }
    metrics = {**result.metrics, "n_train": int(len(split.train)), "n_test": int(len(split.test))}
    ckpt: JsonObject = {
        "format": 1,
        "trainer": job.trainer,
        "model_file": result.model_file,
        "spec": job.recorded_spec(),
        "hyper": dict(job.hyper),
        "seed": job.seed,
        "dataset": describe_dataset(job, data),
        "task": result.task.describe(),
        "split": split_info,
        "metrics": dict(metrics),
        "device": result.device.to_json(),
        "versions": {"python": platform.python_version(), **result.versions},
    }
    write_json(job.out_dir / "ckpt.json", ckpt)
    report: JsonObject = {
        "trainer": job.trainer,
        "job": {"id": job.job_id, "name": job.name},
        "step": result.step_name,
        "loss": result.loss_name,
        "curve": {name: list(losses) for name, losses in result.curve.items()},
        "metrics": dict(metrics),
        "split": split_info,
        "device": result.device.to_json(),
    }
    write_json(job.out_dir / "report.json", report)
    (job.out_dir / "report.md").write_text(render_report(job, result, metrics), encoding="utf-8")


def render_report(job: TrainerJob, result: TrainingResult, metrics: Mapping[str, float], most_rows: int = 25) -> str:
    """The training report as Markdown: metrics, split, and the loss curve thinned to at most `most_rows` rows."""
    split, device, curve = result.split, result.device, result.curve
    lines = [f"# {job.name or job.job_id or 'job'}: {job.trainer}", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items())]
    lines += ["", f"Split `{split.recipe}`: {len(split.train)} rows to train, {len(split.test)} held out."]
    if split.test_groups:
        lines.append(f"Held-out groups: {', '.join(split.test_groups)}.")
    lines += [f"Device: {device.kind} {device.name}".rstrip() + ".", ""]
    steps = len(curve.get("train", []))
    if steps:
        columns = sorted(curve)
        lines += [f"## {result.loss_name} by {result.step_name}", ""]
        lines += ["| " + " | ".join([result.step_name, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
        stride = progress_every(steps, most_rows)
        shown = sorted({*range(0, steps, stride), steps - 1})
        lines += ["| " + " | ".join([str(i + 1), *(_fmt(curve[c][i]) for c in columns)]) + " |" for i in shown]
    return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:  # an int (a row count) prints as it is
    return f"{value:.6g}" if isinstance(value, float) else str(value)
