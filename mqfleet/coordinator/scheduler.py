"""Who may run what: eligibility rules, ranking and the reasons a job waits. Pure, no I/O.

`Claims.claim` and `Claims.why_waiting` both ask these functions, so the
answer a claim acts on and the reason `mqfleet show` prints never disagree.
A reason is a short sentence naming the rule and the values it compared.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mqfleet.manifest.types import HostPolicy, JobSpec, Requirements
from mqfleet.wire.advert import normalise_arch
from mqfleet.wire.owner import AVAILABLE, OwnerPolicy, hours_availability
from mqfleet.wire.topics import JsonObject

#: Shortest commit prefix accepted as naming the same commit as a full sha.
_MIN_COMMIT_PREFIX = 7
#: An entry of `jobs.failed_hosts` that names no host ('#' is never in a host id): the memory limit, in GiB,
#: under which an attempt of the job ran out of memory (`oom`). Part of the set key like the hosts, so the
#: rule that reads it keeps the claim's guarantee (docs/INTERNALS.md, "How a claim picks a job").
OOM_MARK = "#oom:"


@dataclass(frozen=True)
class HostView:
    """What the scheduler knows of one host: its advert, presence, policy and load."""

    id: str
    #: the advert as stored: checked by mqfleet.wire.advert when it arrived, read here with isinstance (an older
    #: database may hold one from before the checks)
    advert: JsonObject
    online: bool
    draining: bool
    slots: int
    slots_used: int
    policy: HostPolicy | None = None
    #: why the host is quarantined ("3 consecutive failed attempts ..."); empty when it is not
    quarantine: str = ""
    #: why its owner's policy keeps it from taking work now ("outside hours until 22:00 (Europe/Berlin)",
    #: "yielding: owner busy"); empty when it may (coordinator/tables/hosts.py `owner_wait`)
    owner_wait: str = ""

    @property
    def takes_work(self) -> bool:
        """Online, and neither draining nor quarantined: it may claim, slots permitting."""
        return self.online and not self.draining and not self.quarantine

    @property
    def has_cuda(self) -> bool:
        return bool(self.advert.get("cuda"))

    @property
    def arch(self) -> str | None:
        """The CPU architecture the advert names, normalised (an older agent's advert names none)."""
        arch = self.advert.get("arch")
        return normalise_arch(arch) if isinstance(arch, str) and arch else None

    @property
    def ram_gib(self) -> float:
        return _number(self.advert.get("ram_gib"))

    @property
    def vram_gib(self) -> float:
        """The largest GPU's memory: a job runs on one GPU, so that is what it can get."""
        return max((_number(g.get("vram_gib")) for g in self.gpus), default=0.0)

    @property
    def job_memory_gib(self) -> float:
        """The memory one job may use here: the owner's `max_memory_gib` when its advert states one, else the RAM."""
        policy = self.advert.get("owner_policy")
        cap = policy.get("max_memory_gib") if isinstance(policy, dict) else None
        ram = self.ram_gib
        if isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap > 0:
            return min(float(cap), ram) if ram > 0 else float(cap)
        return ram

    @property
    def gpus(self) -> list[JsonObject]:
        gpus = self.advert.get("gpus")
        return [g for g in gpus if isinstance(g, dict)] if isinstance(gpus, list) else []


def host_slots(advert: JsonObject, policy: HostPolicy | None) -> int:
    """Concurrent jobs for a host: the manifest's [[hosts]] entry wins over the advert."""
    if policy is not None:
        return policy.slots
    slots = advert.get("slots")
    return slots if isinstance(slots, int) and not isinstance(slots, bool) and slots > 0 else 1


def host_reasons(host: HostView) -> list[str]:
    """Why a host takes no new work at all right now; [] when it may take a job."""
    if not host.online:
        return ["offline"]
    reasons = ["draining"] if host.draining else []
    if host.quarantine:
        reasons.append(f"quarantined after {host.quarantine}; `mqfleet undrain {host.id}` releases it")
    if host.owner_wait:
        reasons.append(host.owner_wait)
    if host.slots_used >= host.slots:
        reasons.append(f"all {host.slots} slot{'s' if host.slots != 1 else ''} busy")
    return reasons


def owner_wait(advert: JsonObject, policy: HostPolicy | None, now: float) -> str:
    """Why the host's owner policy keeps it from taking work at `now`, or '' (docs/OPERATIONS.md, "Owner policies").

    An agent that advertises its `availability` is trusted for it: it judges its hours on its own clock and zone,
    and knows whether its owner is busy or paused it. The manifest's `hours` for the host are also judged here,
    on the coordinator's clock, when the advertised policy states no hours of its own: an agent that predates
    owner policies, or one the manifest's defaults have not reached, never gets work outside them.
    """
    stated = advert.get("availability")
    if isinstance(stated, dict):
        state, reason = stated.get("state"), stated.get("reason")
        if state != AVAILABLE:
            return reason if isinstance(reason, str) and reason else f"owner policy: {state}"
    defaults = policy.owner if policy is not None else None
    if defaults is None or defaults.hours is None:
        return ""
    advertised = advert.get("owner_policy")
    advertised = advertised if isinstance(advertised, dict) else {}
    if advertised.get("hours") is not None:
        return ""  # the agent's own (its config, or these defaults it received): its availability says
    zone = advertised.get("timezone")
    judged = OwnerPolicy(hours=defaults.hours, timezone=zone if isinstance(zone, str) else defaults.timezone)
    try:
        availability = hours_availability(judged, now)
    except ValueError:  # a zone this coordinator does not know: the manifest's (checked at load), else UTC
        availability = hours_availability(OwnerPolicy(hours=defaults.hours, timezone=defaults.timezone), now)
    return "" if availability.is_available else f"{availability.reason} (the manifest's hours, judged by the coordinator)"


def requirement_reasons(need: Requirements, host: HostView, *, commit: str) -> list[str]:
    """Why this host may not run a job with these requirements by policy or capability; [] when it may.

    Presence, draining and slots are not looked at (see `host_reasons`), so the
    prefer_cuda rule can ask whether a busy CUDA host could run the job. A rule reads
    only `need`, never the job: what it reads is then part of `need.key`, by which a
    claim judges every job of one requirement set at once (docs/INTERNALS.md, "How a claim picks a job").
    """
    reasons = _policy_reasons(need.model, host)
    if need.allowed_hosts and host.id not in need.allowed_hosts:
        reasons.append(f"not in allowed_hosts [{', '.join(need.allowed_hosts)}]")
    if need.arch and host.arch not in need.arch:
        accepted = str(list(need.arch))
        reasons.append(f"arch {host.arch} not in {accepted}" if host.arch else
                       f"the host's advert names no arch (its agent is older); the job needs one of {accepted}")
    if need.require_cuda and not host.has_cuda:
        reasons.append("needs CUDA; host has none")
    if need.min_vram_gib > 0 and host.vram_gib < need.min_vram_gib:
        reasons.append(f"needs {need.min_vram_gib:g} GiB VRAM; host has {host.vram_gib:g}")
    if need.min_ram_gib > 0 and host.ram_gib < need.min_ram_gib:
        reasons.append(f"needs {need.min_ram_gib:g} GiB RAM; host has {host.ram_gib:g}")
    if need.min_torch:
        torch = host.advert.get("torch")
        if not isinstance(torch, str) or not torch:
            reasons.append(f"needs torch >= {need.min_torch}; host has no torch")
        elif not version_at_least(torch, need.min_torch):
            reasons.append(f"needs torch >= {need.min_torch}; host has {torch}")
    if need.same_commit:
        have = host.advert.get("git_commit")
        if not commit:
            reasons.append("needs the manifest's commit, but [fleet] commit is not set")
        elif not is_same_commit(have, commit):
            reasons.append(f"needs commit {commit[:12]}; host has {str(have)[:12] if have else 'none'}")
        elif host.advert.get("git_dirty") is True:
            # the commit alone does not say what trains when tracked files differ from it
            reasons.append(f"needs commit {commit[:12]}; host has it with uncommitted changes (git_dirty)")
    return reasons


def models_allowed(host: HostView, models: Iterable[str]) -> list[str] | None:
    """The models the host's policy lets it run, of those given; None when its policy allows every model."""
    policy = host.policy
    if policy is None or (policy.allow_jobs == ("*",) and not policy.deny_jobs):
        return None
    return sorted(m for m in models if not _policy_reasons(m, host))


def _policy_reasons(model: str, host: HostView) -> list[str]:
    policy = host.policy
    if policy is None:
        return []
    denied = [p for p in policy.deny_jobs if fnmatch.fnmatchcase(model, p)]
    if denied:
        return [f"policy deny_jobs matches '{model}'"]
    if not any(fnmatch.fnmatchcase(model, p) for p in policy.allow_jobs):
        return [f"policy allow_jobs does not match '{model}'"]
    return []


def cuda_wait_reason(need: Requirements, host: HostView, others: Iterable[HostView], *, commit: str) -> str | None:
    """For a prefer_cuda job on a host without CUDA: the online CUDA host it waits for, if any.

    A CUDA host counts while it is online, not draining and could run the job
    by policy and capability, whether or not its slots are busy right now.
    """
    if not need.prefer_cuda or host.has_cuda:
        return None
    for other in others:
        if other.id == host.id or not other.has_cuda or not other.takes_work:
            continue
        if not requirement_reasons(need, other, commit=commit):
            return f"waits for a CUDA host ({other.id} is online)"
    return None


def retry_host_reason(
    need: Requirements, host: HostView, failed: frozenset[str], others: Iterable[HostView], *, commit: str
) -> str | None:
    """For a job an attempt of which failed on this host, or ran out of memory here or on a host with no
    more memory than this one: the other host it waits for, if any.

    Another host counts while it takes work and could run it by policy and capability,
    busy or not, and, after an `oom`, has more memory for a job than the limit the job ran
    out under (`HostView.job_memory_gib`). A host with too little memory waits for such a
    host; a host that failed the job waits for one that has not. When there is none, the
    job may run here again.
    """
    oom_gib = oom_floor(failed)
    if oom_gib and host.job_memory_gib <= oom_gib:
        for other in others:
            if other.id != host.id and other.takes_work and other.job_memory_gib > oom_gib and \
                    not requirement_reasons(need, other, commit=commit):
                return (f"an attempt ran out of memory under {oom_gib:g} GiB and this host gives a job "
                        f"{host.job_memory_gib:g} GiB; its retry prefers {other.id} ({other.job_memory_gib:g} GiB)")
    if host.id not in failed:
        return None
    for other in others:
        if other.id == host.id or other.id in failed or not other.takes_work:
            continue
        if oom_gib and other.job_memory_gib <= oom_gib:
            continue
        if not requirement_reasons(need, other, commit=commit):
            return f"an attempt failed on this host; its retry prefers {other.id}, which has not failed it"
    return None


def oom_floor(failed: Iterable[str]) -> float:
    """The memory limit (GiB) an attempt of the job ran out under, from its failed hosts' OOM_MARK; 0 for none."""
    for entry in failed:
        if entry.startswith(OOM_MARK):
            try:
                return max(0.0, float(entry[len(OOM_MARK):]))
            except ValueError:
                return 0.0
    return 0.0


def with_oom_floor(failed: Iterable[str], gib: float) -> list[str]:
    """Failed hosts with the OOM_MARK raised to `gib` (the larger limit stays), sorted as the set key needs."""
    kept = [e for e in failed if not e.startswith(OOM_MARK)]
    floor = max(gib, oom_floor(failed))
    return sorted([*kept, f"{OOM_MARK}{floor:.3f}"])


def needs_gpu(job: JobSpec, host: HostView) -> bool:
    """A job gets a GPU when it must have CUDA, or prefers it and this host has it."""
    return job.require_cuda or (job.prefer_cuda and host.has_cuda)


def pick_gpu(job: JobSpec, host: HostView, leased_gpus: Iterable[int]) -> list[int]:
    """GPU indices for a job on this host: one big-enough GPU with the fewest of this host's leases."""
    if not needs_gpu(job, host):
        return []
    load: dict[int, int] = {}
    for index in leased_gpus:
        load[index] = load.get(index, 0) + 1
    fits = [
        gpu
        for g in host.gpus
        if isinstance(gpu := g.get("index"), int) and _number(g.get("vram_gib")) >= job.min_vram_gib
    ]
    if not fits:
        return []
    return [min(fits, key=lambda i: (load.get(i, 0), i))]


def rank_key(priority: int, prefer_cuda: bool, seq: int, *, host_cuda: bool) -> tuple[int, int, int]:
    """Sort key of a candidate for one host, smallest first: priority, then prefer_cuda on a CUDA host, then age.

    `seq` is the job's insertion order, so equal timestamps cannot reorder jobs.
    The claim query's ORDER BY is this key written in SQL.
    """
    cuda_first = 0 if (host_cuda and prefer_cuda) else 1
    return (-priority, cuda_first, seq)


def first_eligible(
    candidates: Sequence[tuple[int, JobSpec]],
    host: HostView,
    others: Iterable[HostView],
    *,
    commit: str,
    failed: Mapping[str, frozenset[str]] | None = None,
) -> JobSpec | None:
    """The best-ranked job of `(seq, spec)` candidates that this host may take now, or None.

    `failed` maps a job id to the hosts where its attempts failed (see `retry_host_reason`). Over every
    pending job this is the definition of a claim's answer; `tables/claim_walk.py` computes the same without
    reading every job, and tests/unit/test_db_properties.py holds the two equal.
    """
    if host_reasons(host):
        return None
    others = list(others)
    failed = failed or {}
    ranked = sorted(candidates, key=lambda c: rank_key(c[1].priority, c[1].prefer_cuda, c[0], host_cuda=host.has_cuda))
    for _seq, job in ranked:
        need = job.requirements
        if requirement_reasons(need, host, commit=commit):
            continue
        if cuda_wait_reason(need, host, others, commit=commit):
            continue
        if failed.get(job.id) and retry_host_reason(need, host, failed[job.id], others, commit=commit):
            continue
        return job
    return None


def hosts_to_wake(jobs: Sequence[JobSpec], hosts: Sequence[HostView], *, commit: str) -> list[str]:
    """The idle hosts whose next claim would take one of these jobs: the ones a `work` nudge names.

    The same rules as `first_eligible`: a host with a free slot that may run the
    job by policy and capability, and is not held back by the prefer_cuda rule.
    """
    woken: list[str] = []
    for host in hosts:
        if host_reasons(host):
            continue
        for job in jobs:
            need = job.requirements
            if not requirement_reasons(need, host, commit=commit) and not cuda_wait_reason(need, host, hosts, commit=commit):
                woken.append(host.id)
                break
    return woken


def version_at_least(have: str, need: str) -> bool:
    """Dotted-int version compare: '2.13.0+cpu' >= '2.3'. Missing parts count as 0."""
    a, b = _version_tuple(have), _version_tuple(need)
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) >= b + (0,) * (width - len(b))


@functools.lru_cache(maxsize=256)
def _version_tuple(text: str) -> tuple[int, ...]:
    # cached: a claim compares the torch of its host with the min_torch of every requirement set it judges
    parts: list[int] = []
    for part in text.strip().split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
        # "0rc1" or "0+cpu": the local or pre-release tail ends the comparable part
        if digits.end() != len(part):
            break
    return tuple(parts)


def is_same_commit(have: object, want: str) -> bool:
    """Equal commits, allowing one side to be an abbreviated sha of the other."""
    if not isinstance(have, str) or not have or not want:
        return False
    have, want = have.lower(), want.lower()
    if have == want:
        return True
    short, full = sorted((have, want), key=len)
    return len(short) >= _MIN_COMMIT_PREFIX and full.startswith(short)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value)
