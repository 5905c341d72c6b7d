"""The built-in trainers' declarations: the hyperparameters each takes, the files each writes, the module that
runs it, and `trainer_argv()` for the grant. Data the manifest checks and the coordinator read, so it lives
below both; `mqfleet/trainers/` reads it from here. Cheap to import: neither torch nor xgboost is loaded.
"""

from __future__ import annotations

from mqfleet.manifest.types import HyperParam, TrainerSpec

#: The hyperparameters each built-in trainer takes: the one place they are declared.
#: Manifest validation refuses any other name at load time.
BUILTIN_HYPER: dict[str, dict[str, HyperParam]] = {
    "xgboost": {
        "n_estimators": HyperParam("n_estimators", "int", 100, min=1, max=100_000),
        "max_depth": HyperParam("max_depth", "int", 6, min=1, max=64),
        "learning_rate": HyperParam("learning_rate", "float", 0.1, min=1e-6, max=1.0),
        "subsample": HyperParam("subsample", "float", 1.0, min=0.01, max=1.0),
        "colsample_bytree": HyperParam("colsample_bytree", "float", 1.0, min=0.01, max=1.0),
        "min_child_weight": HyperParam("min_child_weight", "float", 1.0, min=0.0, max=1e6),
        "reg_lambda": HyperParam("reg_lambda", "float", 1.0, min=0.0, max=1e6),
    },
    "torch-mlp": {
        "hidden": HyperParam("hidden", "int", 64, min=1, max=65_536),
        "layers": HyperParam("layers", "int", 2, min=1, max=64),
        "epochs": HyperParam("epochs", "int", 20, min=1, max=100_000),
        "batch_size": HyperParam("batch_size", "int", 128, min=1, max=1_000_000),
        "lr": HyperParam("lr", "float", 1e-3, min=1e-8, max=10.0),
        "weight_decay": HyperParam("weight_decay", "float", 0.0, min=0.0, max=10.0),
        "dropout": HyperParam("dropout", "float", 0.0, min=0.0, max=0.99),
    },
}

#: Module that runs each built-in trainer (`python -m MODULE`).
BUILTIN_MODULE: dict[str, str] = {
    "xgboost": "mqfleet.trainers.xgboost",
    "torch-mlp": "mqfleet.trainers.torch_mlp",
}

#: Files each built-in trainer writes to its output folder; an attempt missing one fails (cause `app`).
BUILTIN_OUTPUTS: dict[str, tuple[str, ...]] = {
    "xgboost": ("model.xgb.json", "ckpt.json", "report.json", "report.md"),
    "torch-mlp": ("model.pt", "ckpt.json", "report.json", "report.md"),
}


def trainer_argv(trainer: TrainerSpec) -> tuple[str, ...]:
    """The argv template that starts a trainer (`{python}` stands for the agent's interpreter): a
    built-in's module, or the manifest's command. The coordinator sends it in the grant."""
    if trainer.builtin is None:
        return trainer.command
    return ("{python}", "-m", BUILTIN_MODULE[trainer.builtin])
