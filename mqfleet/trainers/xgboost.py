"""The `xgboost` built-in trainer: gradient-boosted trees on a tabular dataset, one progress line per round.

Run by the agent as `python -m mqfleet.trainers.xgboost [--name value ...]`. Writes `model.xgb.json`
(xgboost's JSON model), `ckpt.json`, `report.json` and `report.md` to `$MQFLEET_OUT_DIR`.

Reproducible: the `hist` tree method, a fixed thread count and the job's seed give the same trees, and so a
bit-identical output folder, for the same job on the same machine. xgboost is imported inside `train()`, so
importing this module costs nothing; torch is never imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mqfleet.trainers import common

if TYPE_CHECKING:
    import numpy as np

    from mqfleet.trainers.dataset import Task

#: Threads xgboost uses, fixed: histogram sums are not guaranteed the same across thread counts, and a
#: host running several jobs (slots) should not have each one take every core.
XGB_THREADS = 2

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


def booster_params(task: Task, hyper: dict[str, Any], *, seed: int, device: str) -> dict[str, Any]:
    """xgboost parameters for this task and these hyperparameters."""
    objective, metric = OBJECTIVES[task.kind]
    params: dict[str, Any] = {
        "objective": objective,
        "eval_metric": metric,
        "tree_method": "hist",
        "device": device,
        "nthread": XGB_THREADS,
        "seed": seed % 2**31,
        "max_depth": hyper["max_depth"],
        "eta": hyper["learning_rate"],
        "subsample": hyper["subsample"],
        "colsample_bytree": hyper["colsample_bytree"],
        "min_child_weight": hyper["min_child_weight"],
        "lambda": hyper["reg_lambda"],
        "verbosity": 1,
    }
    if task.kind == "multiclass":
        params["num_class"] = len(task.classes)
    return params


def _progress_callback(xgb: Any, total: int, metric: str) -> Any:
    every = common.progress_every(total)

    class ProgressCallback(xgb.callback.TrainingCallback):  # type: ignore[misc]
        def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
            done = epoch + 1
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
    spec = job.spec
    data = load_dataset(job.dataset_path, target=spec.get("target") or "target", group_column=spec.get("group_column") or "")
    split = split_dataset(data, recipe=spec.get("split_recipe") or "random", seed=job.seed, train_hosts=spec.get("train_hosts") or ())
    task = decide_task(data.y, str(spec.get("mode") or ""))
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
    metric = params["eval_metric"]
    history: dict[str, dict[str, list[float]]] = {}
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=job.hyper["n_estimators"],
        evals=[(dtrain, "train"), (dtest, "test")],
        evals_result=history,
        verbose_eval=False,
        callbacks=[_progress_callback(xgb, job.hyper["n_estimators"], metric)],
    )
    model_file = "model.xgb.json"
    booster.save_model(str(job.out_dir / model_file))

    raw = booster.predict(dtest)
    prediction = np.column_stack([1.0 - raw, raw]) if task.kind == "binary" else raw
    metrics = score(task, data.y[split.test], prediction)
    curve = {name: [float(v) for v in history[name][metric]] for name in ("train", "test")}
    result = common.TrainingResult(
        data=data,
        split=split,
        task=task,
        model_file=model_file,
        metrics=metrics,
        curve=curve,
        loss_name=metric,
        step_name="round",
        device={"kind": device, "name": gpu_name, "threads": XGB_THREADS},
        versions={"xgboost": xgb.__version__, "numpy": np.__version__},
    )
    common.write_outputs(job, result)
    common.emit_progress({"progress": 1.0, "metrics": {**metrics, "n_train": len(split.train), "n_test": len(split.test)}})


def main() -> None:
    common.run_trainer(train)


if __name__ == "__main__":
    main()
