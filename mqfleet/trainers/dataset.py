"""Tabular datasets for the built-in trainers: CSV/NPZ loading, seeded random and group splits, task and scores.

numpy only (no pandas), so a training host needs nothing beyond what the trainers themselves import.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mqfleet.errors import TrainerInputError

if TYPE_CHECKING:
    from mqfleet.wire.topics import JsonObject, JsonValue

#: A target with at most this many distinct integer values is a classification target (unless the mode says).
MAX_CLASSES = 20
#: Job modes that force the task instead of deciding it from the target's values; any other mode decides.
CLASSIFICATION_MODES = frozenset({"classification", "classify"})
REGRESSION_MODES = frozenset({"regression", "regress"})
#: Split recipes that hold out whole groups; `host` reads the same as `group`.
GROUP_RECIPES = frozenset({"group", "host"})
#: Share of rows (random recipe) or of groups (group recipe) held out for evaluation.
TEST_FRACTION = 0.2
#: Column used as the group column when the job names none.
DEFAULT_GROUP_COLUMN = "host"


@dataclass(frozen=True)
class Dataset:
    """A tabular dataset: numeric features (NaN where missing), a numeric target, and optional string groups."""

    features: tuple[str, ...]
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None
    target: str
    group_column: str
    sha256: str


@dataclass(frozen=True)
class Split:
    """Sorted row indices of the training and the held-out part, and which groups each holds."""

    recipe: str
    train: np.ndarray
    test: np.ndarray
    train_groups: tuple[str, ...] = ()
    test_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    """Binary or multiclass classification (with its sorted class values) or regression."""

    kind: str
    classes: tuple[float, ...] = ()

    @property
    def is_classification(self) -> bool:
        return self.kind != "regression"

    def encode(self, y: np.ndarray) -> np.ndarray:
        """Class values as indices 0..k-1 (a value unseen in training maps to the nearest index; it is counted wrong)."""
        return np.searchsorted(np.asarray(self.classes), y).clip(0, len(self.classes) - 1).astype(np.int64)

    def describe(self) -> JsonObject:
        classes: list[JsonValue] = [int(c) if float(c).is_integer() else float(c) for c in self.classes]
        return {"kind": self.kind, "classes": classes}


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise TrainerInputError(f"dataset {path.name} is empty; a header row is needed")
        header = [h.strip() for h in header]
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise TrainerInputError(f"dataset {path.name} line {line_no}: {len(row)} fields, header has {len(header)}")
            rows.append(row)
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise TrainerInputError(f"dataset {path.name}: column(s) {', '.join(duplicated)} appear more than once")
    cells = np.array(rows, dtype=str).reshape(len(rows), len(header))
    return {name: cells[:, i] for i, name in enumerate(header)}


def _read_npz(path: Path, target: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as e:
        raise TrainerInputError(f"dataset {path.name} is not a readable NPZ file: {e}") from e
    if "X" in arrays and "y" in arrays and (target not in arrays or target == "y"):
        # The X/y layout: features are columns of X, the target is y whatever the job calls it.
        x = arrays["X"]
        if x.ndim != 2:
            raise TrainerInputError(f"dataset {path.name}: X must be 2-D, it has shape {x.shape}")
        names = [str(n) for n in arrays["columns"]] if "columns" in arrays else [f"x{i}" for i in range(x.shape[1])]
        if len(names) != x.shape[1]:
            raise TrainerInputError(f"dataset {path.name}: {len(names)} column names for {x.shape[1]} columns of X")
        columns = {name: x[:, i] for i, name in enumerate(names)}
        columns[target] = arrays["y"]
        if "groups" in arrays:
            columns["groups"] = arrays["groups"]
        return columns
    return arrays


def _as_numbers(values: np.ndarray) -> np.ndarray | None:
    """A column as float64 (an empty cell is NaN), or None when some cell is not a number."""
    if values.dtype.kind in "biuf":
        return values.astype(np.float64)
    try:
        return np.array([float(v) if v.strip() else np.nan for v in values.tolist()], dtype=np.float64)
    except ValueError:
        return None


def load_dataset(path: Path, *, target: str, group_column: str = "") -> Dataset:
    """Read a CSV (header row) or NPZ (arrays named by column, or X, y and optional groups) dataset.

    The group column is `group_column`, else a column named `host`, else an NPZ's `groups`; it is never a feature.
    Every other column but the target is a numeric feature.
    """
    if not path.is_file():
        raise TrainerInputError(f"dataset {path} not found (relative paths start at {Path.cwd().name or '/'}/)")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        columns = _read_csv(path)
    elif suffix == ".npz":
        columns = _read_npz(path, target)
    else:
        raise TrainerInputError(f"dataset {path.name}: unknown format {suffix or '(none)'}; use .csv or .npz")
    for name, values in columns.items():
        if values.ndim != 1:
            raise TrainerInputError(f"dataset {path.name}: column {name!r} has shape {values.shape}, expected 1-D")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise TrainerInputError(f"dataset {path.name}: columns have different lengths {sorted(lengths)}")
    if target not in columns:
        raise TrainerInputError(
            f"target column {target!r} is not in dataset {path.name}; columns: {', '.join(columns) or '(none)'}"
        )
    if group_column and group_column not in columns:
        raise TrainerInputError(f"group column {group_column!r} is not in dataset {path.name}")
    group_name = group_column or next((c for c in (DEFAULT_GROUP_COLUMN, "groups") if c in columns and c != target), "")
    y = _as_numbers(columns[target])
    if y is None or len(y) == 0 or not np.all(np.isfinite(y)):
        raise TrainerInputError(f"target column {target!r} must hold a number in every row")
    features = [name for name in columns if name not in (target, group_name)]
    if not features:
        raise TrainerInputError(f"dataset {path.name} has no feature columns besides {target!r}")
    matrix = np.empty((len(y), len(features)), dtype=np.float64)
    for i, name in enumerate(features):
        numbers = _as_numbers(columns[name])
        if numbers is None:
            raise TrainerInputError(f"feature column {name!r} is not numeric (name it as group_column if it is one)")
        matrix[:, i] = numbers
    groups = np.array([str(g).strip() for g in columns[group_name].tolist()], dtype=str) if group_name else None
    return Dataset(tuple(features), matrix, y, groups, target, group_name, sha256_file(path))


def split_dataset(data: Dataset, *, recipe: str, seed: int, train_hosts: Sequence[str] = ()) -> Split:
    """Split rows for training and evaluation, seeded, so the same job always holds out the same rows.

    `random` holds out 20% of rows. `group` (or `host`) holds out whole groups: those not in `train_hosts` when
    it is given, else a seeded 20% of the groups (at least one).
    """
    rng = np.random.default_rng(seed % 2**32)
    recipe = recipe or "random"
    n = len(data.y)
    if recipe == "random":
        if n < 2:
            raise TrainerInputError(f"dataset has {n} row(s); a split needs at least 2")
        n_test = min(n - 1, max(1, round(n * TEST_FRACTION)))
        order = rng.permutation(n)
        return Split(recipe, np.sort(order[n_test:]), np.sort(order[:n_test]))
    if recipe not in GROUP_RECIPES:
        raise TrainerInputError(f"unknown split_recipe {recipe!r}; use random, group or host")
    if data.groups is None:
        raise TrainerInputError(
            f"split_recipe {recipe!r} needs a group column: set group_column or have a column named {DEFAULT_GROUP_COLUMN!r}"
        )
    names = [str(g) for g in np.unique(data.groups)]
    if train_hosts:
        unknown = sorted(set(train_hosts) - set(names))
        if unknown:
            raise TrainerInputError(f"train_hosts {', '.join(unknown)} not in column {data.group_column!r}")
        train_set = set(train_hosts)
        if train_set == set(names):
            raise TrainerInputError("train_hosts names every group; none is left to evaluate on")
    else:
        if len(names) < 2:
            raise TrainerInputError(f"column {data.group_column!r} holds one group; holding out groups needs two")
        n_hold = min(len(names) - 1, max(1, round(len(names) * TEST_FRACTION)))
        held = {names[i] for i in rng.permutation(len(names))[:n_hold]}
        train_set = set(names) - held
    in_train = np.isin(data.groups, sorted(train_set))
    return Split(
        recipe,
        np.flatnonzero(in_train),
        np.flatnonzero(~in_train),
        tuple(sorted(train_set)),
        tuple(sorted(set(names) - train_set)),
    )


def decide_task(y: np.ndarray, mode: str) -> Task:
    """Classification when the target holds at most 20 distinct integers, else regression; mode
    `classification` or `regression` decides instead."""
    values = np.unique(y)
    integral = bool(np.all(values == np.round(values)))
    if mode in REGRESSION_MODES or not (mode in CLASSIFICATION_MODES or (integral and len(values) <= MAX_CLASSES)):
        return Task("regression")
    if len(values) < 2:
        raise TrainerInputError(f"the target holds the single value {values[0]!r}; nothing to classify")
    return Task("binary" if len(values) == 2 else "multiclass", tuple(float(v) for v in values))


def score(task: Task, y_true: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """Held-out metrics: accuracy, log loss and the majority-class accuracy to beat; or rmse and mae.

    `prediction` is class probabilities, shape (rows, classes), for classification; values for regression.
    """
    if not task.is_classification:
        error = prediction.astype(np.float64) - y_true
        return {"rmse": float(np.sqrt(np.mean(error**2))), "mae": float(np.mean(np.abs(error)))}
    labels = task.encode(y_true)
    known = np.isin(y_true, np.asarray(task.classes))
    proba = np.clip(prediction.astype(np.float64), 1e-15, 1.0)
    picked = np.where(known, proba[np.arange(len(labels)), labels], 1e-15)
    majority = np.bincount(labels[known], minlength=len(task.classes)).max() if known.any() else 0
    return {
        "accuracy": float(np.mean((np.argmax(proba, axis=1) == labels) & known)),
        "logloss": float(-np.mean(np.log(picked))),
        "baseline_accuracy": float(majority / len(labels)),
    }


def sha256_file(path: Path) -> str:
    """The sha256 hex of a file, read a MiB at a time; the dataset's fingerprint in the report."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
