"""The manifest's types: frozen dataclasses that the coordinator, the agent, the CLI and the
trainers read, and `job_id`. A leaf: it imports nothing of the package but `defaults` and
`errors` (and `wire/topics.py`'s JSON types, for annotations only), so any module may import it without
pulling in manifest parsing (`mqfleet.manifest.load`).
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import TYPE_CHECKING, TypeAlias

from mqfleet import defaults
from mqfleet.defaults import RETRY_BACKOFF_MAX_S
from mqfleet.errors import AmbiguousError, NotFoundError

if TYPE_CHECKING:  # annotations only, so this stays a leaf at run time
    from mqfleet.wire.owner import OwnerPolicy
    from mqfleet.wire.topics import JsonObject, JsonValue

#: A hyperparameter's value, of one of the declarable types (int, float, str, bool).
HyperValue: TypeAlias = bool | int | float | str


@dataclass(frozen=True)
class HyperParam:
    """A declared hyperparameter: its type (int, float, str, bool), default and bounds."""

    name: str
    type: str
    default: HyperValue | None = None
    min: float | None = None
    max: float | None = None
    choices: tuple[HyperValue, ...] = ()


@dataclass(frozen=True)
class TrainerSpec:
    """How to train a model: a built-in trainer or a command, and the hyperparameters it takes."""

    name: str
    builtin: str | None
    command: tuple[str, ...]
    hyper: dict[str, HyperParam]
    #: globs, relative to the output folder, that must each match a file when the trainer ends
    outputs: tuple[str, ...] = ()
    #: False for a trainer that cannot resume: its jobs get no checkpoint folder.
    resumable: bool = True


@dataclass(frozen=True)
class HostPolicy:
    """Operator policy for one host (its capability is detected, not declared)."""

    id: str
    allow_jobs: tuple[str, ...] = ("*",)
    deny_jobs: tuple[str, ...] = ()
    slots: int = 1
    labels: tuple[str, ...] = ()
    #: the owner policy keys of the entry (hours, when_busy, on_yield, ...): defaults for what the host's
    #: agent config leaves unset (docs/OPERATIONS.md, "Owner policies"); None when the entry sets none
    owner: OwnerPolicy | None = None


#: The key of a [fleet] field's metadata that holds the kind its value is checked as (`manifest/values.py`,
#: `coerce`): the one table of the [fleet] keys, their types, defaults and checks.
KIND = "kind"


def _kind(kind: str) -> dict[str, str]:
    return {KIND: kind}


@dataclass(frozen=True)
class FleetSettings:
    """The [fleet] table: each field is a key, its default, and (in its metadata) the kind its value must be."""

    max_attempts: int = field(default=defaults.MAX_ATTEMPTS, metadata=_kind("int>=1"))
    lease_s: float = field(default=defaults.LEASE_S, metadata=_kind("number>0"))
    grace_s: float = field(default=defaults.GRACE_S, metadata=_kind("number>0"))
    #: the training repo commit that `same_commit` jobs need
    commit: str = field(default="", metadata=_kind("str"))
    #: default wall-clock limit of one attempt; None: no limit
    timeout_s: float | None = field(default=None, metadata=_kind("number>0"))
    #: default longest silence (no output line, no progress); None: no limit
    stall_s: float | None = field(default=None, metadata=_kind("number>0"))
    #: wait before a failed job's next attempt; doubles per counted attempt
    retry_backoff_s: float = field(default=0.0, metadata=_kind("number>=0"))
    #: consecutive failed attempts that quarantine a host; None: never
    quarantine_after: int | None = field(default=None, metadata=_kind("int>=1"))
    #: cancel jobs whose `after` dependency ended failed or cancelled
    cancel_unsatisfiable: bool = field(default=False, metadata=_kind("bool"))
    #: trainer output lines kept per attempt
    log_max_lines: int = field(default=defaults.LOG_MAX_LINES, metadata=_kind("int>=1"))
    #: store each attempt's output lines, progress history and usage
    keep_history: bool = field(default=True, metadata=_kind("bool"))
    #: events, logs and progress of jobs ended longer ago are pruned
    keep_days: float = field(default=defaults.KEEP_DAYS, metadata=_kind("number>0"))
    checkpoint_interval_s: float = field(default=defaults.CHECKPOINT_INTERVAL_S, metadata=_kind("number>0"))
    checkpoint_max_mib: float = field(default=defaults.CHECKPOINT_MAX_MIB, metadata=_kind("number>0"))

    def backoff_s(self, counted_attempts: int) -> float:
        """Wait before the next attempt of a job that has used `counted_attempts` (>= 1): doubles, capped."""
        if self.retry_backoff_s <= 0 or counted_attempts < 1:
            return 0.0
        cap = max(RETRY_BACKOFF_MAX_S, self.retry_backoff_s)
        return float(min(self.retry_backoff_s * 2 ** min(counted_attempts - 1, 30), cap))


@dataclass(frozen=True)
class Requirements:
    """What a job asks of the host that runs it: exactly the JobSpec fields that the host rules of
    `coordinator.scheduler` read, each under its JobSpec name. Those rules take this, not the JobSpec,
    so a rule can only read a field listed here, and its `key` then covers the field.

    Jobs with the same `key` are, for any host at any moment, either all runnable by it or all not, so a
    claim judges each key once however many jobs share it (docs/INTERNALS.md, "How a claim picks a job").
    A new host rule adds the fields it reads here (and to JobSpec): nothing else to do for claims.
    """

    model: str
    allowed_hosts: tuple[str, ...] = ()
    arch: tuple[str, ...] = ()
    require_cuda: bool = False
    prefer_cuda: bool = False
    min_vram_gib: float = 0.0
    min_ram_gib: float = 0.0
    min_torch: str = ""
    same_commit: bool = False

    @property
    def key(self) -> str:
        """The digest the jobs table stores per job (`jobs.req_key`, indexed): 128 bits of sha256 over the
        fields that differ from their default, so a field added later leaves the keys of older jobs as
        they were, and no manifest can make two different requirement sets collide."""
        return _requirements_key(_requirement_values(self))


#: The names of the Requirements fields: stored with the keys, so that keys made from other fields are made again.
REQUIREMENT_FIELDS = tuple(f.name for f in fields(Requirements))
_REQUIREMENT_DEFAULTS = tuple(f.default for f in fields(Requirements))
#: The values of those fields, in that order, of a Requirements or a JobSpec.
_requirement_values = operator.attrgetter(*REQUIREMENT_FIELDS)


def requirements_key_of(spec: Mapping[str, object]) -> str:
    """The requirements key of a job given as its `JobSpec.to_dict()` JSON, as the jobs table stores it
    (equal to `JobSpec.requirements_key`; a field the JSON lacks has its default)."""
    values = (spec.get(name, default) for name, default in zip(REQUIREMENT_FIELDS, _REQUIREMENT_DEFAULTS, strict=True))
    return _requirements_key(tuple(tuple(v) if isinstance(v, list) else v for v in values))


@lru_cache(maxsize=4096)
def _requirements_key(values: tuple[object, ...]) -> str:
    # cached by the values, in REQUIREMENT_FIELDS order: a sweep of 100,000 jobs has a handful of
    # requirement sets, so a manifest load hashes each set once
    doc = {name: value for name, value, default in zip(REQUIREMENT_FIELDS, values, _REQUIREMENT_DEFAULTS, strict=True)
           if value != default}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class JobSpec:
    """One job, hyperparameters with defaults applied; `after` holds job ids."""

    id: str
    name: str
    model: str
    mode: str
    hyper: dict[str, HyperValue]
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
    #: the CPU architectures the job may run on (normalised, see mqfleet.wire.advert.ARCHES); empty: any
    arch: tuple[str, ...] = ()
    priority: int = 0
    after: tuple[str, ...] = ()
    timeout_s: float | None = None  # wall-clock limit of one attempt, [fleet] default applied
    stall_s: float | None = None  # longest time without an output line or progress, [fleet] default applied
    #: Overrides [fleet] checkpoint_interval_s for this job; None keeps the fleet's.
    checkpoint_interval_s: float | None = None
    #: The most memory the trainer's whole process tree may use (a host's own cap may be lower); None: no limit
    max_memory_gib: float | None = None

    @property
    def requirements(self) -> Requirements:
        """What this job asks of a host (the fields of the same names)."""
        return Requirements(*_requirement_values(self))

    @property
    def requirements_key(self) -> str:
        """`self.requirements.key`, without building the Requirements (a manifest load asks it of every job)."""
        return _requirements_key(_requirement_values(self))

    def to_dict(self) -> JsonObject:
        """The spec as JSON: what the grant carries, the jobs table stores and the artifact records."""
        out: JsonObject = {
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
            "timeout_s": self.timeout_s,
            "stall_s": self.stall_s,
        }
        # Only when set, so the specs (and artifacts) of jobs without an override stay as they were.
        if self.checkpoint_interval_s is not None:
            out["checkpoint_interval_s"] = self.checkpoint_interval_s
        if self.arch:
            out["arch"] = list(self.arch)
        if self.max_memory_gib is not None:
            out["max_memory_gib"] = self.max_memory_gib
        return out


@dataclass(frozen=True)
class Manifest:
    """A validated manifest."""

    fleet: FleetSettings
    trainers: dict[str, TrainerSpec]
    hosts: dict[str, HostPolicy]
    jobs: tuple[JobSpec, ...]
    source: str = ""
    text: str = field(default="", repr=False)
    #: job id -> where the job comes from in the file (`jobs[2]`, `sweeps[0]`)
    places: dict[str, str] = field(default_factory=dict, repr=False)
    #: sweep name (its `name`, or `{model}-{mode}`) -> the ids of the jobs it expands to, in file order
    sweeps: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def trainer(self, model: str) -> TrainerSpec:
        """The trainer of a model; NotFoundError when the manifest declares none."""
        try:
            return self.trainers[model]
        except KeyError:
            raise NotFoundError(f"no trainer {model!r} in {self.source or 'the manifest'}") from None

    def job_by_name(self, name: str) -> JobSpec | None:
        return next((j for j in self.jobs if j.name == name), None)

    def job_by_id(self, job_id: str) -> JobSpec | None:
        return next((j for j in self.jobs if j.id == job_id), None)

    def resolve_job(self, ref: str) -> JobSpec:
        """A job by full id, unique id prefix or name; NotFoundError or AmbiguousError otherwise."""
        job = self.job_by_id(ref) or self.job_by_name(ref)
        if job is not None:
            return job
        matches = [j for j in self.jobs if ref and j.id.startswith(ref)]
        if len(matches) > 1:
            raise AmbiguousError(f"{ref!r} is a prefix of {len(matches)} job ids; give more characters")
        if not matches:
            raise NotFoundError(f"no job named {ref!r} or with an id starting with it")
        return matches[0]


def job_id(
    model: str,
    mode: str,
    hyper: Mapping[str, JsonValue],
    split_recipe: str,
    train_hosts: Iterable[str],
    seed: int,
    dataset: str,
) -> str:
    """sha256 hex of the canonical JSON of what makes a job; `hyper` must have its defaults applied."""
    doc = {
        "model": model,
        "mode": mode,
        "hyper": dict(hyper),
        "split_recipe": split_recipe,
        "train_hosts": list(train_hosts),
        "seed": seed,
        "dataset": dataset,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()).hexdigest()
