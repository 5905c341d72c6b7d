"""The manifest: the one TOML file an operator edits. Loads, expands sweeps, validates, computes job ids.

(Data types below are the shared contract; loading and validation are filled in by load_manifest.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class HyperParam:
    """A declared hyperparameter: its type (int, float, str, bool), default and bounds."""

    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class TrainerSpec:
    """How to train a model: a built-in trainer or a command, and the hyperparameters it takes."""

    name: str
    builtin: str | None
    command: tuple[str, ...]
    hyper: dict[str, HyperParam]


@dataclass(frozen=True)
class HostPolicy:
    """Operator policy for one host (its capability is detected, not declared)."""

    id: str
    allow_jobs: tuple[str, ...] = ("*",)
    deny_jobs: tuple[str, ...] = ()
    slots: int = 1
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class FleetSettings:
    """The [fleet] table."""

    max_attempts: int = 3
    lease_s: float = 90.0
    grace_s: float = 10.0
    commit: str = ""  # the training repo commit that `same_commit` jobs need


@dataclass(frozen=True)
class JobSpec:
    """One job, hyperparameters with defaults applied; `after` holds job ids."""

    id: str
    name: str
    model: str
    mode: str
    hyper: dict[str, Any]
    seed: int = 0
    split_recipe: str = "random"
    train_hosts: tuple[str, ...] = ()
    dataset: str = ""
    target: str = "target"
    group_column: str = ""
    require_cuda: bool = False
    prefer_cuda: bool = False
    min_vram_gib: float = 0.0
    min_ram_gib: float = 0.0
    min_torch: str = ""
    same_commit: bool = False
    allowed_hosts: tuple[str, ...] = ()
    priority: int = 0
    after: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "model": self.model,
            "mode": self.mode,
            "hyper": dict(self.hyper),
            "seed": self.seed,
            "split_recipe": self.split_recipe,
            "train_hosts": list(self.train_hosts),
            "dataset": self.dataset,
            "target": self.target,
            "group_column": self.group_column,
            "require_cuda": self.require_cuda,
            "prefer_cuda": self.prefer_cuda,
            "min_vram_gib": self.min_vram_gib,
            "min_ram_gib": self.min_ram_gib,
            "min_torch": self.min_torch,
            "same_commit": self.same_commit,
            "allowed_hosts": list(self.allowed_hosts),
            "priority": self.priority,
            "after": list(self.after),
        }


@dataclass(frozen=True)
class Manifest:
    """A validated manifest."""

    fleet: FleetSettings
    trainers: dict[str, TrainerSpec]
    hosts: dict[str, HostPolicy]
    jobs: tuple[JobSpec, ...]
    source: str = ""
    text: str = field(default="", repr=False)
