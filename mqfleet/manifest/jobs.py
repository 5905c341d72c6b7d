"""Turns the [[jobs]] and [[sweeps]] of a manifest into JobSpecs: checks each entry against its
trainer, expands sweeps, names every job uniquely, computes ids (duplicates refused) and resolves
`after` to ids (unknown jobs and cycles refused). Problems go to the shared `Checker`.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from mqfleet.manifest.tables import check_value
from mqfleet.manifest.types import FleetSettings, HyperValue, JobSpec, TrainerSpec, job_id
from mqfleet.manifest.values import Checked, Checker, TomlTable, TomlValue, coerce, did_you_mean, fmt, show
from mqfleet.wire.advert import ARCHES, normalise_arch

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
    "arch": "strs",
    "priority": "int",
    "after": "strs",
    "timeout_s": "number>0",
    "stall_s": "number>0",
    "checkpoint_interval_s": "number>0",
    "max_memory_gib": "number>0",
}
_JOB_KEYS = (*_JOB_KINDS, "hyper", "seed")
#: A job with every default: where an entry's absent keys read from.
_DEFAULT_JOB = JobSpec(id="", name="", model="", mode="default", hyper={})
V = TypeVar("V")
_VERSION = re.compile(r"\d+(\.\d+)*")
_HEX_PREFIX = re.compile(r"[0-9a-f]{8,64}")


@dataclass
class JobDraft:
    """A job on its way to a JobSpec: named, then identified, then linked to the jobs it waits for."""

    place: str
    name: str
    explicit: bool  # the operator wrote this name, so a clash is a problem rather than a `-2`
    spec: JobSpec | None  # the checked job, its id, name and `after` still to come; None when the entry has problems
    after: tuple[str, ...] = ()
    combo: str = ""  # the sweep values that make this job, for messages
    id: str = ""
    sweep: str = ""  # the name of the [[sweeps]] entry it came from ("" for [[jobs]])

    def where(self) -> str:
        return f"{self.place} ({self.combo})" if self.combo else self.place


def read_jobs(
    ck: Checker,
    entries: list[tuple[int, TomlTable]],
    key: str,
    trainers: dict[str, TrainerSpec | None],
    fleet: FleetSettings,
) -> list[JobDraft]:
    """The drafts of the [[jobs]] (key "jobs") or [[sweeps]] (key "sweeps") entries, in file order."""
    drafts: list[JobDraft] = []
    for i, entry in entries:
        drafts += _read_entry(ck, entry, f"{key}[{i}]", trainers, fleet, sweep=key == "sweeps")
    return drafts


def _read_entry(
    ck: Checker,
    entry: TomlTable,
    place: str,
    trainers: dict[str, TrainerSpec | None],
    fleet: FleetSettings,
    *,
    sweep: bool,
) -> list[JobDraft]:
    """The drafts of one [[jobs]] entry (one) or one [[sweeps]] entry (one per combination)."""
    before = len(ck.problems)
    ck.keys(entry, _JOB_KEYS, place)
    got = ck.fields(entry, _JOB_KINDS, place)
    model, mode = got.text("model", None), got.text("mode", _DEFAULT_JOB.mode)
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
    if got.text("name", None) == "":
        ck.add(f"{place}.name", "must not be empty; leave it out for the default name")
    min_torch = got.text("min_torch", "")
    if min_torch and not _VERSION.fullmatch(min_torch):
        ck.add(f"{place}.min_torch", f'must be a dotted version like "2.3", not {show(min_torch)}')
    if got.flag("same_commit", False) and not fleet.commit:
        ck.add(
            f"{place}.same_commit",
            'is true but [fleet] has no commit; set commit = "<git sha>" in [fleet] or drop same_commit',
        )
    arch = _checked_arch(ck, got.texts("arch", _DEFAULT_JOB.arch), f"{place}.arch")
    seeds = _axis(ck, entry.get("seed", _DEFAULT_JOB.seed), f"{place}.seed", sweep, _check_seed)
    axes: list[tuple[str, list[HyperValue]]] = []
    raw_hyper = entry.get("hyper", {})
    if not isinstance(raw_hyper, dict):
        ck.add(f"{place}.hyper", f"must be a table, like hyper = {{ name = value }}, not {show(raw_hyper)}")
    elif trainer is not None:
        axes = _hyper_axes(ck, raw_hyper, f"{place}.hyper", trainer, sweep)
    base = got.text("name", "") or f"{model}-{mode}"
    after = got.texts("after", _DEFAULT_JOB.after)
    explicit = "name" in got and not sweep
    if len(ck.problems) > before or trainer is None or model is None:
        return [JobDraft(place, base, explicit, None, after)]
    spec = _checked_job(got, model, mode, fleet, arch)
    return _expand(ck, place, base, spec, after, axes, seeds, explicit=explicit, sweep=sweep)


def _checked_arch(ck: Checker, names: tuple[str, ...], place: str) -> tuple[str, ...]:
    """The CPU architectures a job accepts, normalised as adverts name them (amd64 -> x86_64); () for any,
    as for allowed_hosts."""
    arches: list[str] = []
    for i, name in enumerate(names):
        arch = normalise_arch(name)
        if arch not in ARCHES:
            ck.add(f"{place}[{i}]", f"unknown CPU architecture {show(name)}{did_you_mean(arch, ARCHES)}; name it as "
                                    f"`uname -m` prints it: {', '.join(ARCHES)} (amd64 and arm64 are read as x86_64 "
                                    "and aarch64)")
        elif arch not in arches:
            arches.append(arch)
    return tuple(arches)


def _checked_job(got: Checked, model: str, mode: str, fleet: FleetSettings, arch: tuple[str, ...]) -> JobSpec:
    """The job an entry's checked keys describe, before its hyperparameters, seed, id, name and `after`."""
    d = _DEFAULT_JOB
    return JobSpec(
        id=d.id, name=d.name, model=model, mode=mode, hyper=d.hyper, seed=d.seed,
        split_recipe=got.text("split_recipe", d.split_recipe),
        train_hosts=got.texts("train_hosts", d.train_hosts),
        dataset=got.text("dataset", d.dataset),
        target=got.text("target", d.target),
        group_column=got.text("group_column", d.group_column),
        require_cuda=got.flag("require_cuda", d.require_cuda),
        prefer_cuda=got.flag("prefer_cuda", d.prefer_cuda),
        min_vram_gib=got.number("min_vram_gib", d.min_vram_gib),
        min_ram_gib=got.number("min_ram_gib", d.min_ram_gib),
        min_torch=got.text("min_torch", d.min_torch),
        same_commit=got.flag("same_commit", d.same_commit),
        allowed_hosts=got.texts("allowed_hosts", d.allowed_hosts),
        arch=arch,
        priority=got.integer("priority", d.priority),
        # the [fleet] limits are defaults: the spec carries the limit in force, so the agent needs no manifest
        timeout_s=got.number("timeout_s", fleet.timeout_s),
        stall_s=got.number("stall_s", fleet.stall_s),
        checkpoint_interval_s=got.number("checkpoint_interval_s", d.checkpoint_interval_s),
        max_memory_gib=got.number("max_memory_gib", d.max_memory_gib),
    )


def _check_seed(value: TomlValue) -> tuple[int | None, str | None]:
    checked, err = coerce("int", value)
    return (checked if isinstance(checked, int) else None), err


def _axis(
    ck: Checker, raw: TomlValue, place: str, sweep: bool, check: Callable[[TomlValue], tuple[V | None, str | None]]
) -> list[V]:
    """The checked values of a seed or hyperparameter: one, or in a sweep, every value of a list."""
    if isinstance(raw, list) and not sweep:
        ck.add(place, "takes one value here; to train every value of a list, use a [[sweeps]] entry")
        return []
    listed = sweep and isinstance(raw, list)
    if listed and not raw:
        ck.add(place, "an empty list expands to no jobs; give at least one value")
    values: list[V] = []
    for i, value in enumerate(raw if isinstance(raw, list) and listed else [raw]):
        checked, err = check(value)
        if err or checked is None:
            ck.add(f"{place}[{i}]" if listed else place, f"{err}")
        else:
            values.append(checked)
    return values


def _hyper_axes(
    ck: Checker, raw: TomlTable, place: str, trainer: TrainerSpec, sweep: bool
) -> list[tuple[str, list[HyperValue]]]:
    """(name, values) of every hyperparameter the trainer declares, in its declaration's order."""
    for key in raw:
        if key not in trainer.hyper:
            takes = ", ".join(sorted(trainer.hyper)) or "nothing"
            ck.add(
                f"{place}.{key}",
                f"not a hyperparameter of trainer {trainer.name!r} (it takes: {takes}){did_you_mean(key, trainer.hyper)}",
            )
    axes: list[tuple[str, list[HyperValue]]] = []
    for key, param in trainer.hyper.items():
        if key in raw:
            axes.append((key, _axis(ck, raw[key], f"{place}.{key}", sweep, functools.partial(check_value, param))))
        elif param.default is None:
            ck.add(
                f"{place}.{key}",
                f"required: trainer {trainer.name!r} declares no default; set it in hyper = {{ {key} = ... }}",
            )
        else:
            axes.append((key, [param.default]))
    return axes


def _expand(
    ck: Checker, place: str, base: str, spec: JobSpec, after: tuple[str, ...],
    axes: list[tuple[str, list[HyperValue]]], seeds: list[int], *, explicit: bool, sweep: bool,
) -> list[JobDraft]:
    """One draft per combination of the hyperparameters' and the seed's values (the cartesian product,
    in a fixed order: hyperparameters alphabetically, the seed varying fastest)."""
    count = math.prod(len(values) for _, values in axes) * len(seeds)
    if count > MAX_SWEEP_JOBS:
        ck.add(place, f"expands to {count} jobs, over the limit of {MAX_SWEEP_JOBS}; list fewer values")
        return [JobDraft(place, base, False, None, after)]
    # names list what varies in a stable order: hyperparameters alphabetically, then the seed
    order = sorted(name for name, _ in axes)
    values_of = dict(axes)
    varying = [name for name in order if len(values_of[name]) > 1]
    drafts = []
    for combo in itertools.product(*(values_of[name] for name in order)):
        chosen = dict(zip(order, combo, strict=True))
        hyper = {name: chosen[name] for name, _ in axes}  # in the trainer's declaration order
        for seed in seeds:
            shown = [f"{name}={fmt(chosen[name])}" for name in varying] + ([f"seed={seed}"] if len(seeds) > 1 else [])
            label = "-".join(shown)
            name = f"{base}-{label}" if label else base
            job = _copy_spec(spec, {"hyper": hyper, "seed": seed})
            drafts.append(JobDraft(place, name, explicit, job, after, ", ".join(shown), sweep=base if sweep else ""))
    return drafts


def link_jobs(ck: Checker, drafts: list[JobDraft]) -> list[JobSpec]:
    """Unique names, ids (duplicates refused) and `after` resolved to ids with cycles refused."""
    by_name: dict[str, JobDraft] = {}
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
    by_id: dict[str, JobDraft] = {}
    specs: dict[str, JobSpec] = {}
    for d in drafts:
        f = d.spec
        if f is None:
            continue
        d.id = job_id(f.model, f.mode, f.hyper, f.split_recipe, f.train_hosts, f.seed, f.dataset)
        if d.id in by_id:
            ck.add(
                d.place,
                f"{d.where()} is the same job as {by_id[d.id].where()} (id {d.id[:12]}): same model, mode, hyper, "
                "split_recipe, train_hosts, seed and dataset; remove one or change one of those",
            )
        else:
            by_id[d.id] = d
            specs[d.id] = f
    # names an entry with problems would have produced are unknown; do not report them twice
    broken = [d.name for d in drafts if d.spec is None]
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
    return [_copy_spec(specs[i], {"id": i, "name": d.name, "after": tuple(edges[i])}) for i, d in by_id.items()]


def _copy_spec(spec: JobSpec, changes: dict[str, object]) -> JobSpec:
    """`dataclasses.replace(spec, **changes)` without running JobSpec's __init__ over all its fields again:
    a manifest of 100,000 jobs copies every spec twice (a sweep point, then its id), and replace() was
    40% of the parse. The values are checked already; the copy is as frozen as the original."""
    copy = object.__new__(JobSpec)
    copy.__dict__.update(spec.__dict__)
    copy.__dict__.update(changes)
    return copy


def _resolve_after(
    ck: Checker, d: JobDraft, by_name: dict[str, JobDraft], by_id: dict[str, JobDraft], broken: list[str]
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
