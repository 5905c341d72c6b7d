"""Turns the [[jobs]] and [[sweeps]] of a manifest into JobSpecs: checks each entry against its
trainer, expands sweeps, names every job uniquely, computes ids (duplicates refused) and resolves
`after` to ids (unknown jobs and cycles refused). Problems go to the shared `Checker`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass
from typing import Any

from mqfleet.manifest_check import Checker, check_value, coerce, did_you_mean, fmt, show
from mqfleet.spec import FleetSettings, JobSpec, TrainerSpec, job_id

#: A sweep that would expand past this many jobs is refused: it is nearly always a typo.
MAX_SWEEP_JOBS = 10_000

# seed and hyper are read apart from these: in a sweep either may hold a list of values
_JOB_KINDS = {
    "name": "str",
    "model": "str",
    "mode": "str",
    "split_recipe": "str",
    "train_hosts": "strs",
    "dataset": "str",
    "target": "str",
    "group_column": "str",
    "require_cuda": "bool",
    "prefer_cuda": "bool",
    "min_vram_gib": "number>=0",
    "min_ram_gib": "number>=0",
    "min_torch": "str",
    "same_commit": "bool",
    "allowed_hosts": "strs",
    "priority": "int",
    "after": "strs",
    "timeout_s": "number>0",
    "stall_s": "number>0",
    "checkpoint_interval_s": "number>0",
}
_JOB_KEYS = (*_JOB_KINDS, "hyper", "seed")
_JOB_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(JobSpec) if f.default is not dataclasses.MISSING
}
_VERSION = re.compile(r"\d+(\.\d+)*")
_HEX_PREFIX = re.compile(r"[0-9a-f]{8,64}")


@dataclass
class _Draft:
    """A job on its way to a JobSpec: named, then identified, then linked to the jobs it waits for."""

    place: str
    name: str
    explicit: bool  # the operator wrote this name, so a clash is a problem rather than a `-2`
    fields: dict[str, Any]  # checked JobSpec fields; empty when the entry has problems
    after: tuple[str, ...] = ()
    combo: str = ""  # the sweep values that make this job, for messages
    id: str = ""
    sweep: str = ""  # the name of the [[sweeps]] entry it came from ("" for [[jobs]])

    def where(self) -> str:
        return f"{self.place} ({self.combo})" if self.combo else self.place


def read_jobs(
    ck: Checker,
    entries: list[tuple[int, dict[str, Any]]],
    key: str,
    trainers: dict[str, TrainerSpec | None],
    fleet: FleetSettings,
) -> list[_Draft]:
    """The drafts of the [[jobs]] (key "jobs") or [[sweeps]] (key "sweeps") entries, in file order."""
    drafts: list[_Draft] = []
    for i, entry in entries:
        drafts += _read_entry(ck, entry, f"{key}[{i}]", trainers, fleet, sweep=key == "sweeps")
    return drafts


def _read_entry(
    ck: Checker,
    entry: dict[str, Any],
    place: str,
    trainers: dict[str, TrainerSpec | None],
    fleet: FleetSettings,
    *,
    sweep: bool,
) -> list[_Draft]:
    """The drafts of one [[jobs]] entry (one) or one [[sweeps]] entry (one per combination)."""
    before = len(ck.problems)
    ck.keys(entry, _JOB_KEYS, place)
    got = ck.fields(entry, _JOB_KINDS, place)
    # the [fleet] limits are defaults: the spec carries the limit in force, so the agent needs no manifest
    for limit in ("timeout_s", "stall_s"):
        if limit not in entry and getattr(fleet, limit) is not None:
            got[limit] = getattr(fleet, limit)
    model, mode = got.get("model"), got.get("mode", "default")
    trainer: TrainerSpec | None = None
    if "model" not in entry:
        ck.add(place, f"missing key 'model'; name one of the declared trainers ({', '.join(trainers) or 'none yet'})")
    elif model is not None and model not in trainers:
        hint = did_you_mean(model, trainers)
        ck.add(
            f"{place}.model",
            f"no trainer {model!r} is declared{hint}; declare [trainers.{model}] or use one of: {', '.join(trainers) or 'none'}",
        )
    elif model is not None:
        trainer = trainers[model]
    if not mode:
        ck.add(f"{place}.mode", 'must not be empty; leave it out for "default"')
    if got.get("name") == "":
        ck.add(f"{place}.name", "must not be empty; leave it out for the default name")
    if got.get("min_torch") and not _VERSION.fullmatch(got["min_torch"]):
        ck.add(f"{place}.min_torch", f'must be a dotted version like "2.3", not {show(got["min_torch"])}')
    if got.get("same_commit") and not fleet.commit:
        ck.add(
            f"{place}.same_commit",
            'is true but [fleet] has no commit; set commit = "<git sha>" in [fleet] or drop same_commit',
        )
    axes = [
        (
            "seed",
            _axis(ck, entry.get("seed", _JOB_DEFAULTS["seed"]), f"{place}.seed", sweep, lambda v: coerce("int", v)),
        )
    ]
    raw_hyper = entry.get("hyper", {})
    if not isinstance(raw_hyper, dict):
        ck.add(f"{place}.hyper", f"must be a table, like hyper = {{ name = value }}, not {show(raw_hyper)}")
    elif trainer is not None:
        axes += _hyper_axes(ck, raw_hyper, f"{place}.hyper", trainer, sweep)
    base = got.get("name") or f"{model}-{mode}"
    after = got.get("after", ())
    if len(ck.problems) > before or trainer is None:
        return [_Draft(place, base, "name" in got and not sweep, {}, after)]
    return _expand(ck, place, base, got, axes, sweep)


def _axis(ck: Checker, raw: Any, place: str, sweep: bool, check: Any) -> list[Any]:
    """The checked values of a seed or hyperparameter: one, or in a sweep, every value of a list."""
    if isinstance(raw, list) and not sweep:
        ck.add(place, "takes one value here; to train every value of a list, use a [[sweeps]] entry")
        return []
    listed = sweep and isinstance(raw, list)
    if listed and not raw:
        ck.add(place, "an empty list expands to no jobs; give at least one value")
    values = []
    for i, value in enumerate(raw if listed else [raw]):
        value, err = check(value)
        if err:
            ck.add(f"{place}[{i}]" if listed else place, err)
        else:
            values.append(value)
    return values


def _hyper_axes(
    ck: Checker, raw: dict[str, Any], place: str, trainer: TrainerSpec, sweep: bool
) -> list[tuple[str, list[Any]]]:
    """(name, values) of every hyperparameter the trainer declares, in its declaration's order."""
    for key in raw:
        if key not in trainer.hyper:
            takes = ", ".join(sorted(trainer.hyper)) or "nothing"
            ck.add(
                f"{place}.{key}",
                f"not a hyperparameter of trainer {trainer.name!r} (it takes: {takes}){did_you_mean(key, trainer.hyper)}",
            )
    axes = []
    for key, param in trainer.hyper.items():
        if key in raw:
            axes.append((key, _axis(ck, raw[key], f"{place}.{key}", sweep, lambda v, p=param: check_value(p, v))))
        elif param.is_required:
            ck.add(
                f"{place}.{key}",
                f"required: trainer {trainer.name!r} declares no default; set it in hyper = {{ {key} = ... }}",
            )
        else:
            axes.append((key, [param.default]))
    return axes


def _expand(
    ck: Checker, place: str, base: str, got: dict[str, Any], axes: list[tuple[str, list[Any]]], sweep: bool
) -> list[_Draft]:
    """One draft per combination of the axes' values (the cartesian product, in a fixed order)."""
    count = math.prod(len(values) for _, values in axes)
    if count > MAX_SWEEP_JOBS:
        ck.add(place, f"expands to {count} jobs, over the limit of {MAX_SWEEP_JOBS}; list fewer values")
        return [_Draft(place, base, False, {}, got.get("after", ()))]
    # names list what varies in a stable order: hyperparameters alphabetically, then the seed
    order = sorted(name for name, _ in axes if name != "seed") + ["seed"]
    values_of = dict(axes)
    varying = [name for name in order if len(values_of[name]) > 1]
    fixed = {k: v for k, v in got.items() if k not in ("name", "after")}
    drafts = []
    for combo in itertools.product(*(values_of[name] for name in order)):
        chosen = dict(zip(order, combo, strict=True))
        seed = chosen.pop("seed")
        hyper = {name: chosen[name] for name, _ in axes if name != "seed"}
        shown = [f"{name}={fmt(seed if name == 'seed' else chosen[name])}" for name in varying]
        label = "-".join(shown)
        fields = {**_JOB_DEFAULTS, "mode": "default", **fixed, "hyper": hyper, "seed": seed}
        name = f"{base}-{label}" if label else base
        drafts.append(_Draft(place, name, "name" in got and not sweep, fields, got.get("after", ()), ", ".join(shown),
                             sweep=base if sweep else ""))
    return drafts


def link_jobs(ck: Checker, drafts: list[_Draft]) -> list[JobSpec]:
    """Unique names, ids (duplicates refused) and `after` resolved to ids with cycles refused."""
    by_name: dict[str, _Draft] = {}
    for d in drafts:
        if d.explicit:
            if d.name in by_name:
                ck.add(
                    f"{d.place}.name",
                    f"{d.name!r} is also the name of {by_name[d.name].place}; job names must be unique",
                )
            else:
                by_name[d.name] = d
    for d in drafts:
        if not d.explicit:
            name, n = d.name, 1
            while name in by_name:
                n += 1
                name = f"{d.name}-{n}"
            d.name = name
            by_name[name] = d
    by_id: dict[str, _Draft] = {}
    for d in (d for d in drafts if d.fields):
        f = d.fields
        d.id = job_id(f["model"], f["mode"], f["hyper"], f["split_recipe"], f["train_hosts"], f["seed"], f["dataset"])
        if d.id in by_id:
            ck.add(
                d.place,
                f"{d.where()} is the same job as {by_id[d.id].where()} (id {d.id[:12]}): same model, mode, hyper, "
                "split_recipe, train_hosts, seed and dataset; remove one or change one of those",
            )
        else:
            by_id[d.id] = d
    # names an entry with problems would have produced are unknown; do not report them twice
    broken = [d.name for d in drafts if not d.fields]
    edges: dict[str, list[str]] = {}
    for d in drafts:  # every draft, so a job with other problems still has its `after` checked
        ids = _resolve_after(ck, d, by_name, by_id, broken)
        if d.id and by_id[d.id] is d:
            edges[d.id] = ids
    for cycle in _find_cycles(edges):
        path = " -> ".join(by_id[i].name for i in cycle)
        ck.add(
            f"{by_id[cycle[0]].place}.after",
            f"jobs wait for each other in a cycle: {path}; remove one of these `after` entries",
        )
    return [JobSpec(**{**d.fields, "id": d.id, "name": d.name, "after": tuple(edges[d.id])}) for d in by_id.values()]


def _resolve_after(
    ck: Checker, d: _Draft, by_name: dict[str, _Draft], by_id: dict[str, _Draft], broken: list[str]
) -> list[str]:
    """Ids of the jobs `d` waits for; an entry naming a job that has problems of its own is dropped quietly."""
    ids: list[str] = []
    for i, ref in enumerate(d.after):
        target = by_name.get(ref)
        if target is None and _HEX_PREFIX.fullmatch(ref):
            matches = [job for key, job in by_id.items() if key.startswith(ref)]
            if len(matches) > 1:
                ck.add(
                    f"{d.place}.after[{i}]",
                    f"{ref!r} is a prefix of {len(matches)} job ids; give more of the id or a name",
                )
                continue
            target = matches[0] if matches else None
        if target is None and any(ref.startswith(name) for name in broken):
            continue
        if target is None:
            hint = did_you_mean(ref, by_name)
            ck.add(
                f"{d.place}.after[{i}]",
                f"no job named {ref!r} (nor with such an id){hint}; name a job of this manifest by name or id",
            )
        elif target.id and target.id not in ids:
            ids.append(target.id)
    return ids


def _find_cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """Each cycle met by a depth-first walk, as a path that ends where it starts (iterative: chains may be long)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    cycles = []
    for root in edges:
        if root in state:
            continue
        path, todo = [root], [iter(edges[root])]
        state[root] = 1
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
            elif state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter(edges[nxt]))
    return cycles
