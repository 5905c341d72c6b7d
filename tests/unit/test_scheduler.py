from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from mqfleet.coordinator.scheduler import (
    HostView,
    cuda_wait_reason,
    first_eligible,
    host_reasons,
    host_slots,
    hosts_to_wake,
    is_same_commit,
    pick_gpu,
    rank_key,
    requirement_reasons,
    version_at_least,
)
from mqfleet.manifest.types import HostPolicy, JobSpec, Requirements
from mqfleet.wire.topics import JsonObject


def spec(name: str = "j", **kw: Any) -> JobSpec:
    kw.setdefault("model", "gbt")
    return JobSpec(id=f"id-{name}", name=name, mode="m", hyper={}, **kw)


def job_reasons(job: JobSpec, host: HostView, *, commit: str) -> list[str]:
    return requirement_reasons(job.requirements, host, commit=commit)


def host(id: str = "h", *, cuda: bool = False, vram: tuple[float, ...] = (), **kw: Any) -> HostView:
    advert: JsonObject = {"cuda": cuda, "ram_gib": 16, "torch": "2.13.0+cpu", "git_commit": "abcdef1234567890",
              "gpus": [{"index": i, "name": "gpu", "uuid": f"u{i}", "vram_gib": v} for i, v in enumerate(vram)]}
    advert.update(kw.pop("advert", {}))
    kw.setdefault("online", True)
    kw.setdefault("draining", False)
    kw.setdefault("slots", 1)
    kw.setdefault("slots_used", 0)
    return HostView(id=id, advert=advert, **kw)


GPU = host("gpu-box", cuda=True, vram=(24.0,))
CPU = host("cpu-box")


def pick(jobs: list[JobSpec], on: HostView, others: tuple[HostView, ...] = ()) -> str | None:
    found = first_eligible(list(enumerate(jobs)), on, others, commit="abcdef1234567890")
    return found.name if found else None


def test_online_idle_host_has_no_host_level_reason() -> None:
    assert host_reasons(CPU) == []


def test_offline_host_takes_nothing() -> None:
    assert host_reasons(host(online=False)) == ["offline"]


def test_draining_host_takes_nothing() -> None:
    assert host_reasons(host(draining=True)) == ["draining"]


def test_host_with_every_slot_busy_takes_nothing() -> None:
    assert host_reasons(host(slots=2, slots_used=2)) == ["all 2 slots busy"]
    assert pick([spec()], host(slots=2, slots_used=2)) is None


def test_manifest_slots_win_over_advert_slots_and_advert_defaults_to_one() -> None:
    assert host_slots({"slots": 4}, HostPolicy(id="h", slots=2)) == 2
    assert host_slots({"slots": 4}, None) == 4
    assert host_slots({}, None) == 1
    assert host_slots({"slots": "many"}, None) == 1


def test_policy_deny_jobs_glob_refuses_the_model() -> None:
    h = host(policy=HostPolicy(id="h", deny_jobs=("g*",)))
    assert job_reasons(spec(), h, commit="") == ["policy deny_jobs matches 'gbt'"]


def test_policy_allow_jobs_must_match_the_model() -> None:
    h = host(policy=HostPolicy(id="h", allow_jobs=("mlp*",)))
    assert job_reasons(spec(), h, commit="") == ["policy allow_jobs does not match 'gbt'"]
    assert job_reasons(spec(model="mlp-big"), h, commit="") == []


def test_host_missing_from_manifest_allows_every_model() -> None:
    assert job_reasons(spec(model="anything"), host(policy=None), commit="") == []


def test_allowed_hosts_limits_the_job_to_the_named_hosts() -> None:
    job = spec(allowed_hosts=("gpu-box",))
    assert job_reasons(job, GPU, commit="") == []
    assert job_reasons(job, CPU, commit="") == ["not in allowed_hosts [gpu-box]"]


def test_require_cuda_refuses_a_host_without_cuda() -> None:
    assert job_reasons(spec(require_cuda=True), CPU, commit="") == ["needs CUDA; host has none"]
    assert job_reasons(spec(require_cuda=True), GPU, commit="") == []


def test_min_vram_compares_against_the_largest_gpu() -> None:
    h = host(cuda=True, vram=(8.0, 12.0))
    assert job_reasons(spec(min_vram_gib=24), h, commit="") == ["needs 24 GiB VRAM; host has 12"]
    assert job_reasons(spec(min_vram_gib=12), h, commit="") == []


def test_min_ram_compares_against_the_advert() -> None:
    assert job_reasons(spec(min_ram_gib=32), CPU, commit="") == ["needs 32 GiB RAM; host has 16"]
    assert job_reasons(spec(min_ram_gib=16), CPU, commit="") == []


def test_arch_limits_the_job_to_hosts_of_the_named_architectures() -> None:
    pi = host("pi", advert={"arch": "aarch64"})
    box = host("box", advert={"arch": "x86_64"})
    job = spec(arch=("aarch64",))
    assert job_reasons(job, pi, commit="") == []
    assert job_reasons(job, box, commit="") == ["arch x86_64 not in ['aarch64']"]
    assert job_reasons(spec(arch=("x86_64", "aarch64")), box, commit="") == []
    assert job_reasons(spec(), box, commit="") == []
    assert pick([job, spec("any")], box) == "any"
    assert pick([job, spec("any")], pi) == "j"


def test_an_advert_spelling_arm64_or_amd64_is_read_as_aarch64_or_x86_64() -> None:
    assert job_reasons(spec(arch=("aarch64",)), host(advert={"arch": "arm64"}), commit="") == []
    assert job_reasons(spec(arch=("x86_64",)), host(advert={"arch": "AMD64"}), commit="") == []


def test_an_advert_without_arch_runs_no_job_that_names_one_and_says_why() -> None:
    old = host("old")  # an agent from before the advert had `arch`
    assert job_reasons(spec(), old, commit="") == []
    [reason] = job_reasons(spec(arch=("aarch64",)), old, commit="")
    assert "names no arch" in reason and "['aarch64']" in reason


def test_min_torch_needs_a_new_enough_torch() -> None:
    assert job_reasons(spec(min_torch="2.3"), CPU, commit="") == []
    assert job_reasons(spec(min_torch="2.14"), CPU, commit="") == ["needs torch >= 2.14; host has 2.13.0+cpu"]


def test_min_torch_refuses_a_host_without_torch() -> None:
    h = host(advert={"torch": None})
    assert job_reasons(spec(min_torch="2.3"), h, commit="") == ["needs torch >= 2.3; host has no torch"]


@pytest.mark.parametrize(
    ("have", "need", "ok"),
    [("2.13.0", "2.3", True), ("2.3", "2.3.0", True), ("2.2.9", "2.3", False), ("10.0", "9.9", True), ("2.4.0rc1", "2.4", True)],
)
def test_versions_compare_as_dotted_integers(have: str, need: str, ok: bool) -> None:
    assert version_at_least(have, need) is ok


def test_same_commit_needs_the_manifest_commit() -> None:
    job = spec(same_commit=True)
    assert job_reasons(job, CPU, commit="abcdef1234567890") == []
    assert job_reasons(job, CPU, commit="abcdef1") == []
    assert job_reasons(job, CPU, commit="0123456789ab") == ["needs commit 0123456789ab; host has abcdef123456"]
    assert job_reasons(job, host(advert={"git_commit": None}), commit="0123456") == ["needs commit 0123456; host has none"]


def test_a_dirty_working_tree_does_not_satisfy_same_commit() -> None:
    job = spec(same_commit=True)
    dirty = host(advert={**CPU.advert, "git_dirty": True})
    assert job_reasons(job, dirty, commit="abcdef1234567890") == [
        "needs commit abcdef123456; host has it with uncommitted changes (git_dirty)"
    ]
    assert job_reasons(job, host(advert={**CPU.advert, "git_dirty": False}), commit="abcdef1234567890") == []
    assert job_reasons(spec(), dirty, commit="abcdef1234567890") == [], "only same_commit jobs care"


def test_same_commit_does_not_accept_a_too_short_prefix() -> None:
    assert not is_same_commit("abc", "abcdef1234567890")
    assert is_same_commit("ABCDEF1", "abcdef1234567890")


def test_every_failing_rule_is_reported() -> None:
    job = spec(require_cuda=True, min_ram_gib=64, allowed_hosts=("x",))
    assert len(job_reasons(job, CPU, commit="")) == 3


def test_higher_priority_ranks_first() -> None:
    assert pick([spec("low", priority=0), spec("high", priority=5)], CPU) == "high"


def test_older_job_ranks_first_among_equals() -> None:
    assert pick([spec("first"), spec("second")], CPU) == "first"


def test_prefer_cuda_job_ranks_first_among_equal_priority_on_a_cuda_host() -> None:
    jobs = [spec("plain"), spec("likes-gpu", prefer_cuda=True)]
    assert pick(jobs, GPU) == "likes-gpu"


def test_prefer_cuda_does_not_beat_a_higher_priority() -> None:
    jobs = [spec("likes-gpu", prefer_cuda=True), spec("urgent", priority=1)]
    assert pick(jobs, GPU) == "urgent"


def test_prefer_cuda_does_not_reorder_jobs_on_a_host_without_cuda() -> None:
    assert rank_key(0, True, 7, host_cuda=False) == rank_key(0, False, 7, host_cuda=False)
    assert rank_key(0, True, 7, host_cuda=True) < rank_key(0, False, 1, host_cuda=True)


def test_prefer_cuda_job_waits_for_an_online_cuda_host_that_could_run_it() -> None:
    jobs = [spec("likes-gpu", prefer_cuda=True), spec("plain")]
    assert pick(jobs, CPU, others=(GPU,)) == "plain"
    assert cuda_wait_reason(jobs[0].requirements, CPU, [GPU], commit="") == "waits for a CUDA host (gpu-box is online)"


def test_prefer_cuda_job_waits_even_when_the_cuda_host_is_busy() -> None:
    busy = host("gpu-box", cuda=True, vram=(24.0,), slots=1, slots_used=1)
    assert pick([spec("likes-gpu", prefer_cuda=True)], CPU, others=(busy,)) is None


def test_prefer_cuda_job_runs_without_cuda_when_no_cuda_host_could_take_it() -> None:
    job = spec("likes-gpu", prefer_cuda=True)
    offline = host("gpu-box", cuda=True, vram=(24.0,), online=False)
    draining = host("gpu-box", cuda=True, vram=(24.0,), draining=True)
    denies = host("gpu-box", cuda=True, vram=(24.0,), policy=HostPolicy(id="gpu-box", deny_jobs=("*",)))
    for other in (offline, draining, denies):
        assert pick([job], CPU, others=(other,)) == "likes-gpu"


def test_gpu_goes_to_a_big_enough_gpu_with_fewest_leases() -> None:
    h = host(cuda=True, vram=(8.0, 24.0, 24.0))
    assert pick_gpu(spec(require_cuda=True, min_vram_gib=16), h, []) == [1]
    assert pick_gpu(spec(require_cuda=True, min_vram_gib=16), h, [1]) == [2]
    assert pick_gpu(spec(require_cuda=True), h, [1, 2]) == [0]


def test_prefer_cuda_job_gets_a_gpu_only_on_a_cuda_host() -> None:
    assert pick_gpu(spec(prefer_cuda=True), GPU, []) == [0]
    assert pick_gpu(spec(prefer_cuda=True), CPU, []) == []
    assert pick_gpu(spec(), GPU, []) == []


def test_a_nudge_wakes_only_idle_hosts_that_could_take_one_of_the_jobs() -> None:
    busy = host("busy", slots_used=1)
    draining = host("draining", draining=True)
    offline = host("offline", online=False)
    hosts = [GPU, CPU, busy, draining, offline]
    assert hosts_to_wake([spec("gpu", require_cuda=True)], hosts, commit="") == ["gpu-box"]
    assert hosts_to_wake([spec("any")], hosts, commit="") == ["gpu-box", "cpu-box"]
    # prefer_cuda: the CPU host would wait for the online CUDA host, so only that one is woken
    assert hosts_to_wake([spec("pc", prefer_cuda=True)], hosts, commit="") == ["gpu-box"]
    assert hosts_to_wake([spec("gpu", require_cuda=True)], [CPU, busy], commit="") == []


def test_every_requirement_is_the_job_field_of_its_name_with_the_same_default() -> None:
    # the claim judges jobs by their requirements' key: a field that differed from the job's would be judged wrongly
    job_fields = {f.name: f for f in dataclasses.fields(JobSpec)}
    for f in dataclasses.fields(Requirements):
        assert f.name in job_fields, f"Requirements.{f.name} is no JobSpec field"
        assert (f.type, f.default) == (job_fields[f.name].type, job_fields[f.name].default), f.name
    job = spec(min_torch="2.3", allowed_hosts=("a",), prefer_cuda=True)
    assert job.requirements == Requirements(model="gbt", min_torch="2.3", allowed_hosts=("a",), prefer_cuda=True)
