"""The `torch-mlp` built-in trainer: a PyTorch multilayer perceptron on a tabular dataset, one progress line per epoch.

Run by the agent as `python -m mqfleet.trainers.torch_mlp [--name value ...]`. Writes `model.pt` (the
state_dict, on the CPU, with the input scaling and missing-value fill as buffers, so the file alone serves
predictions), `ckpt.json`, `report.json` and `report.md` to `$MQFLEET_OUT_DIR`.

Reproducible: seeded initialisation and shuffling, `torch.use_deterministic_algorithms(True)` and a fixed
thread count give a bit-identical output folder for the same job on the same machine. On a GPU
(`CUDA_VISIBLE_DEVICES` set and CUDA usable) it trains there, with cuBLAS pinned to its deterministic
workspace. torch is imported inside `train()`; xgboost is never imported.

Resumable: after every epoch the model, the optimizer, the batch-order generator, the RNG states and the
loss curve go to `$MQFLEET_CHECKPOINT_DIR` (when the agent gives one), written then renamed; a later
attempt restores them all and carries on with the next epoch, so it writes the same bytes as an
uninterrupted run.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from mqfleet.trainers import common, output

if TYPE_CHECKING:
    import numpy as np

    from mqfleet.manifest.types import HyperValue
    from mqfleet.trainers.dataset import Dataset, Split, Task

#: Intra- and inter-op threads, fixed: the summation order of parallel CPU kernels follows the thread count,
#: so a fixed count keeps results bit-identical; one thread suits these small MLPs and hosts running several jobs.
TORCH_THREADS = 1
#: The checkpoint file in the checkpoint folder.
STATE_FILE = "torch-mlp-state.pt"


class SavedState(TypedDict):
    """The checkpoint file's content: everything the next epoch depends on. torch is imported lazily and
    untyped here, so its objects (state dicts, RNG state tensors) are `Any`."""

    epoch: int
    model: Any
    optimizer: Any
    shuffler: Any
    rng: Any
    cuda_rng: Any  # None on the CPU
    curve: dict[str, list[float]]


def build_model(
    torch: Any, n_in: int, n_out: int, hyper: Mapping[str, HyperValue], stats: dict[str, np.ndarray]
) -> Any:
    """The MLP: fill missing inputs, standardise, then `layers` hidden ReLU layers of width `hidden`."""
    nn = torch.nn
    layers, hidden = common.hyper_int(hyper, "layers"), common.hyper_int(hyper, "hidden")
    dropout = common.hyper_number(hyper, "dropout")

    class TabularMLP(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            for name, values in stats.items():
                self.register_buffer(name, torch.tensor(values, dtype=torch.float32))
            blocks: list[Any] = []
            width = n_in
            for _ in range(layers):
                blocks += [nn.Linear(width, hidden), nn.ReLU()]
                if dropout > 0:
                    blocks.append(nn.Dropout(dropout))
                width = hidden
            blocks.append(nn.Linear(width, n_out))
            self.body = nn.Sequential(*blocks)

        def forward(self, x: Any) -> Any:
            x = torch.where(torch.isnan(x), self.x_fill, x)
            return self.body((x - self.x_mean) / self.x_scale)

    return TabularMLP()


def input_stats(data: Dataset, split: Split, task: Task) -> dict[str, np.ndarray]:
    """Scaling learnt on the training rows only: feature fill, mean and scale; target mean and scale."""
    import numpy as np

    x = data.x[split.train]
    with np.errstate(all="ignore"):
        mean = np.nan_to_num(np.nanmean(x, axis=0))
        scale = np.nan_to_num(np.nanstd(x, axis=0))
    y = data.y[split.train]
    regression = not task.is_classification
    return {
        "x_fill": mean,
        "x_mean": mean,
        "x_scale": np.where(scale > 1e-12, scale, 1.0),
        "y_mean": np.array([y.mean() if regression else 0.0]),
        "y_scale": np.array([max(float(y.std()), 1e-12) if regression else 1.0]),
    }


def pick_device(torch: Any, wants_cuda: bool) -> tuple[Any, str]:
    if wants_cuda and torch.cuda.is_available():
        return torch.device("cuda", 0), torch.cuda.get_device_name(0)
    return torch.device("cpu"), ""


def train(argv: Sequence[str]) -> None:
    """Train on the job's dataset and write the artifact folder."""
    job = common.load_job("torch-mlp", argv)
    import numpy as np

    from mqfleet.trainers.dataset import decide_task, load_dataset, score, split_dataset

    # Data first: a bad dataset fails in a fraction of a second instead of after torch's import.
    hyper = job.hyper
    data = load_dataset(job.dataset_path, target=job.target, group_column=job.group_column)
    split = split_dataset(data, recipe=job.split_recipe, seed=job.seed, train_hosts=job.train_hosts)
    task = decide_task(data.y, job.mode)

    # cuBLAS reads this when CUDA starts; without it deterministic mode refuses some GPU matrix products.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    torch.set_num_threads(TORCH_THREADS)
    torch.set_num_interop_threads(TORCH_THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(job.seed % 2**63)
    device, gpu_name = pick_device(torch, job.wants_cuda)
    common.log(
        f"torch {torch.__version__} on {device.type}: {task.kind}, {len(split.train)} rows to train, "
        f"{len(split.test)} held out ({split.recipe}), {len(data.features)} features"
    )

    stats = input_stats(data, split, task)
    n_out = len(task.classes) if task.kind == "multiclass" else 1
    model = build_model(torch, len(data.features), n_out, hyper, stats).to(device)
    loss_name, loss_fn = _loss(torch, task)

    def tensors(rows: np.ndarray) -> tuple[Any, Any]:
        x = torch.tensor(data.x[rows], dtype=torch.float32, device=device)
        if task.kind == "multiclass":
            return x, torch.tensor(task.encode(data.y[rows]), dtype=torch.int64, device=device)
        target = task.encode(data.y[rows]) if task.is_classification else (data.y[rows] - stats["y_mean"]) / stats["y_scale"]
        return x, torch.tensor(target, dtype=torch.float32, device=device).unsqueeze(1)

    x_train, y_train = tensors(split.train)
    x_test, y_test = tensors(split.test)
    lr, weight_decay = common.hyper_number(hyper, "lr"), common.hyper_number(hyper, "weight_decay")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    # A CPU generator of its own: batch order depends on the seed alone, not on the device or other draws.
    shuffler = torch.Generator().manual_seed(job.seed % 2**63)
    epochs, batch_size = common.hyper_int(hyper, "epochs"), common.hyper_int(hyper, "batch_size")
    every = common.progress_every(epochs)
    curve: dict[str, list[float]] = {"train": [], "test": []}
    folder = common.checkpoint_folder()
    first_epoch = 1
    saved = _load_state(torch, folder, device)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        shuffler.set_state(saved["shuffler"])
        torch.set_rng_state(saved["rng"])
        if device.type == "cuda" and saved["cuda_rng"] is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        curve = {"train": list(saved["curve"]["train"]), "test": list(saved["curve"]["test"])}
        first_epoch = int(saved["epoch"]) + 1
        common.log(f"resumed at epoch {first_epoch - 1} of {epochs} from the checkpoint")
    for epoch in range(first_epoch, epochs + 1):
        model.train()
        order = torch.randperm(len(split.train), generator=shuffler).to(device)
        total = torch.zeros((), device=device)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch)
        model.eval()
        with torch.no_grad():
            test_loss = loss_fn(model(x_test), y_test)
        curve["train"].append(_as_reported(task, float(total) / len(order), stats))
        curve["test"].append(_as_reported(task, float(test_loss), stats))
        if folder is not None:
            _save_state(torch, folder, device, epoch=epoch, model=model, optimizer=optimizer, shuffler=shuffler, curve=curve)
        if epoch % every == 0 or epoch == epochs:
            fields = {"progress": round(epoch / epochs, 4), "epoch": epoch, "loss": curve["train"][-1], "test_loss": curve["test"][-1]}
            common.emit_progress(fields)

    model_file = "model.pt"
    # Tensors go to the CPU before saving, so the file loads anywhere and names no GPU.
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, str(job.out_dir / model_file))
    metrics = score(task, data.y[split.test], _predict(torch, model, x_test, task, stats))
    result = output.TrainingResult(
        data=data,
        split=split,
        task=task,
        model_file=model_file,
        metrics=metrics,
        curve=curve,
        loss_name=loss_name,
        step_name="epoch",
        device=output.Device(kind=device.type, name=gpu_name, threads=TORCH_THREADS),
        versions={"torch": torch.__version__, "numpy": np.__version__},
    )
    output.write_outputs(job, result)
    common.emit_progress({"progress": 1.0, "metrics": {**metrics, "n_train": len(split.train), "n_test": len(split.test)}})


def _save_state(
    torch: Any, folder: Path, device: Any, *, epoch: int, model: Any, optimizer: Any, shuffler: Any,
    curve: dict[str, list[float]],
) -> None:
    """Everything the next epoch depends on, in one file written then renamed."""
    state: SavedState = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "shuffler": shuffler.get_state(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "curve": curve,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    common.replace_atomically(folder / STATE_FILE, buffer.getvalue())


def _load_state(torch: Any, folder: Path | None, device: Any) -> SavedState | None:
    """The saved state, or None when there is none. Tensors only (weights_only): a checkpoint is data, never code."""
    path = folder / STATE_FILE if folder is not None else None
    if path is None or not path.exists():
        return None
    state: SavedState = torch.load(str(path), map_location=device, weights_only=True)  # what _save_state wrote
    # RNG states are CPU byte tensors whatever the device.
    state["shuffler"], state["rng"] = state["shuffler"].cpu(), state["rng"].cpu()
    if state["cuda_rng"] is not None:
        state["cuda_rng"] = state["cuda_rng"].cpu()
    return state


def _loss(torch: Any, task: Task) -> tuple[str, Any]:
    if task.kind == "binary":
        return "logloss", torch.nn.BCEWithLogitsLoss()
    if task.kind == "multiclass":
        return "mlogloss", torch.nn.CrossEntropyLoss()
    return "rmse", torch.nn.MSELoss()


def _as_reported(task: Task, loss: float, stats: dict[str, np.ndarray]) -> float:
    # Regression trains on the standardised target; the curve shows rmse in the target's own units.
    return float(loss) if task.is_classification else float(loss**0.5 * float(stats["y_scale"][0]))


def _predict(torch: Any, model: Any, x: Any, task: Task, stats: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model(x).cpu().double()
    if task.kind == "binary":
        p = torch.sigmoid(out[:, 0])
        prediction: np.ndarray = torch.stack([1.0 - p, p], dim=1).numpy()
    elif task.kind == "multiclass":
        prediction = torch.softmax(out, dim=1).numpy()
    else:
        prediction = (out[:, 0] * float(stats["y_scale"][0]) + float(stats["y_mean"][0])).numpy()
    return prediction


def main() -> None:
    common.run_trainer(train)


if __name__ == "__main__":
    main()
