"""The `xgboost` built-in trainer: gradient-boosted trees on a tabular dataset, one progress line per round.

Run by the agent as `python -m mqfleet.trainers.xgboost [--name value ...]`. Writes `model.xgb.json`
(xgboost's JSON model), `ckpt.json`, `report.json` and `report.md` to `$MQFLEET_OUT_DIR`.

Reproducible: the `hist` tree method, a fixed thread count and the job's seed give the same trees, and so a
bit-identical output folder, for the same job on the same machine. xgboost is imported inside `train()`, so
importing this module costs nothing; torch is never imported.

Resumable: training runs in ten segments of rounds, each starting from the booster serialised at the end of
the one before. After each segment the booster and the loss history go to `$MQFLEET_CHECKPOINT_DIR` (when
the agent gives one), and a later attempt continues from the last segment saved. Every run, resumed or
not, does the same computation, so a resumed run writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mqfleet.trainers import common, output

if TYPE_CHECKING:
    import numpy as np

    from mqfleet.manifest.types import HyperValue
    from mqfleet.trainers.dataset import Task

#: Threads xgboost uses, fixed: histogram sums are not guaranteed the same across thread counts, and a
#: host running several jobs (slots) should not have each one take every core.
XGB_THREADS = 2

#: Checkpoints per run: the rounds are trained in this many segments (fewer when there are fewer rounds).
SEGMENTS = 10
#: The checkpoint's index file: rounds done, loss history and the booster file it goes with.
STATE_FILE = "xgboost-state.json"

OBJECTIVES: dict[str, tuple[str, str]] = {
    "binary": ("binary:logistic", "logloss"),
    "multiclass": ("multi:softprob", "mlogloss"),
    "regression": ("reg:squarederror", "rmse"),
}


def cuda_device_name(visible: str) -> str:
    """Name of the first GPU in `CUDA_VISIBLE_DEVICES` (an index or a UUID) through NVML, or "" when there is
    no usable driver or no such GPU."""
    first = visible.split(",")[0].strip()
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if first.isdigit():
                handle = pynvml.nvmlDeviceGetHandleByIndex(int(first))
            else:
                handle = pynvml.nvmlDeviceGetHandleByUUID(first)
            name = pynvml.nvmlDeviceGetName(handle)
            return name.decode() if isinstance(name, bytes) else str(name)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library, no such device: all mean "train on the CPU"
        return ""


def booster_params(task: Task, hyper: Mapping[str, HyperValue], *, seed: int, device: str) -> dict[str, str | float]:
    """xgboost parameters for this task and these hyperparameters (the first segment's seed; see `train`)."""
    objective, metric = OBJECTIVES[task.kind]
    params: dict[str, str | float] = {
        "objective": objective,
        "eval_metric": metric,
        "tree_method": "hist",
        "device": device,
        "nthread": XGB_THREADS,
        "seed": seed % 2**31,
        "max_depth": common.hyper_int(hyper, "max_depth"),
        "eta": common.hyper_number(hyper, "learning_rate"),
        "subsample": common.hyper_number(hyper, "subsample"),
        "colsample_bytree": common.hyper_number(hyper, "colsample_bytree"),
        "min_child_weight": common.hyper_number(hyper, "min_child_weight"),
        "lambda": common.hyper_number(hyper, "reg_lambda"),
        "verbosity": 1,
    }
    if task.kind == "multiclass":
        params["num_class"] = len(task.classes)
    return params


def _progress_callback(xgb: Any, total: int, metric: str) -> Any:
    every = common.progress_every(total)

    class ProgressCallback(xgb.callback.TrainingCallback):  # type: ignore[misc]
        # evals_log is xgboost's EvalsLog: data set -> metric -> one value per round (pairs only under xgb.cv)
        def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, dict[str, list[float]]]) -> bool:
            # Counted from the booster, not `epoch`: each segment's xgb.train call counts its own rounds from 0.
            done = int(model.num_boosted_rounds())
            if done % every == 0 or done == total:
                common.emit_progress(
                    {
                        "progress": round(done / total, 4),
                        "round": done,
                        "loss": float(evals_log["train"][metric][-1]),
                        "test_loss": float(evals_log["test"][metric][-1]),
                    }
                )
            return False

    return ProgressCallback()


def _matrix(xgb: Any, x: np.ndarray, label: np.ndarray, features: Sequence[str]) -> Any:
    try:
        return xgb.DMatrix(x, label=label, feature_names=list(features), nthread=XGB_THREADS)
    except ValueError:
        # Column names xgboost refuses (brackets, '<') only cost the names in the model file.
        return xgb.DMatrix(x, label=label, nthread=XGB_THREADS)


def train(argv: Sequence[str]) -> None:
    """Train on the job's dataset and write the artifact folder."""
    job = common.load_job("xgboost", argv)
    import numpy as np

    from mqfleet.trainers.dataset import decide_task, load_dataset, score, split_dataset

    # Data first: a bad dataset fails before xgboost's import.
    data = load_dataset(job.dataset_path, target=job.target, group_column=job.group_column)
    split = split_dataset(data, recipe=job.split_recipe, seed=job.seed, train_hosts=job.train_hosts)
    task = decide_task(data.y, job.mode)
    import xgboost as xgb

    labels = task.encode(data.y) if task.is_classification else data.y
    gpu_name = cuda_device_name(job.cuda_devices) if job.wants_cuda and xgb.build_info().get("USE_CUDA") else ""
    device = "cuda" if gpu_name else "cpu"
    common.log(
        f"xgboost {xgb.__version__} on {device}: {task.kind}, {len(split.train)} rows to train, "
        f"{len(split.test)} held out ({split.recipe}), {len(data.features)} features"
    )

    dtrain = _matrix(xgb, data.x[split.train], labels[split.train], data.features)
    dtest = _matrix(xgb, data.x[split.test], labels[split.test], data.features)
    params = booster_params(task, job.hyper, seed=job.seed, device=device)
    metric = OBJECTIVES[task.kind][1]  # the params' eval_metric
    total = common.hyper_int(job.hyper, "n_estimators")
    folder = common.checkpoint_folder()
    done, history, saved = _resume(folder, metric)
    if done:
        common.log(f"resumed at round {done} of {total} from the checkpoint")
    segment = max(1, math.ceil(total / SEGMENTS))
    progress = _progress_callback(xgb, total, metric)
    while done < total:
        rounds = min(segment, total - done)
        part: dict[str, dict[str, list[float]]] = {}
        # A seed per segment: each segment's draws depend only on where it starts, not on how we got there.
        booster = xgb.train(
            {**params, "seed": (job.seed % 2**31 + done) % 2**31},
            dtrain,
            num_boost_round=rounds,
            evals=[(dtrain, "train"), (dtest, "test")],
            evals_result=part,
            verbose_eval=False,
            callbacks=[progress],
            xgb_model=xgb.Booster(model_file=saved) if saved is not None else None,
        )
        for name in ("train", "test"):
            history[name] += [float(v) for v in part.get(name, {}).get(metric, [])]
        done += rounds
        saved = booster.save_raw("ubj")
        if folder is not None:
            _save(folder, done, history, saved, metric)
    # The final booster comes from the bytes of the last segment on every path, resumed or not.
    booster = xgb.Booster(params={"nthread": XGB_THREADS, "device": device}, model_file=saved)
    model_file = "model.xgb.json"
    booster.save_model(str(job.out_dir / model_file))

    raw = booster.predict(dtest)
    prediction = np.column_stack([1.0 - raw, raw]) if task.kind == "binary" else raw
    metrics = score(task, data.y[split.test], prediction)
    curve = {name: history[name] for name in ("train", "test")}
    result = output.TrainingResult(
        data=data,
        split=split,
        task=task,
        model_file=model_file,
        metrics=metrics,
        curve=curve,
        loss_name=metric,
        step_name="round",
        device=output.Device(kind=device, name=gpu_name, threads=XGB_THREADS),
        versions={"xgboost": xgb.__version__, "numpy": np.__version__},
    )
    output.write_outputs(job, result)
    common.emit_progress({"progress": 1.0, "metrics": {**metrics, "n_train": len(split.train), "n_test": len(split.test)}})


def _resume(folder: Path | None, metric: str) -> tuple[int, dict[str, list[float]], bytearray | None]:
    """Rounds done, loss history and serialised booster from the checkpoint folder; (0, empty, None) for none."""
    empty: dict[str, list[float]] = {"train": [], "test": []}
    index = folder / STATE_FILE if folder is not None else None
    if index is None or not index.exists():
        return 0, empty, None
    state = json.loads(index.read_text(encoding="utf-8"))
    if state.get("metric") != metric:
        common.log(f"checkpoint is for metric {state.get('metric')!r}, not {metric!r}; starting from round 0")
        return 0, empty, None
    raw = bytearray((index.parent / str(state["booster"])).read_bytes())
    return int(state["rounds"]), {k: [float(v) for v in state["history"][k]] for k in ("train", "test")}, raw


def _save(folder: Path, rounds: int, history: dict[str, list[float]], raw: bytearray, metric: str) -> None:
    """The booster first, then the index naming it: a reader sees the previous checkpoint or this one whole."""
    booster_name = f"booster-{rounds}.ubj"
    common.replace_atomically(folder / booster_name, bytes(raw))
    state = {"rounds": rounds, "metric": metric, "history": history, "booster": booster_name}
    common.replace_atomically(folder / STATE_FILE, json.dumps(state, sort_keys=True).encode())
    for old in folder.glob("booster-*.ubj"):
        if old.name != booster_name:
            old.unlink(missing_ok=True)


def main() -> None:
    common.run_trainer(train)


if __name__ == "__main__":
    main()
