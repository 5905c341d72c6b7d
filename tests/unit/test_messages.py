"""The typed agent messages: strict on the fields they know, tolerant of fields they do not."""

from __future__ import annotations

from typing import Any

import pytest

from mqfleet.agent.selftest import Check, Outcome
from mqfleet.errors import BadRequestError
from mqfleet.lifecycle import Cause
from mqfleet.wire.published import ControlAction, ControlMessage, HostStatus, LogBatch, Nudge
from mqfleet.wire.reports import REPORTS_PER_REQUEST, Usage
from mqfleet.wire.requests import (
    CheckpointStartRequest,
    ClaimReply,
    CompleteRequest,
    FailRequest,
    Grant,
    GrantedCheckpoint,
    Health,
    Presence,
    RenewReply,
    RenewRequest,
    UploadUrlReply,
)

GRANT: dict[str, Any] = {
    "job": {"id": "j" * 64, "name": "gbt-1", "status": "claimed", "host": "h1", "attempts": 0, "in_manifest": True},
    "spec": {"id": "j" * 64, "hyper": {"n_estimators": 10}},
    "trainer": {"name": "gbt", "builtin": "xgboost", "command": [], "argv": ["{python}", "-m", "mqfleet.trainers.xgboost"],
                "hyper": {}, "outputs": ["model.xgb.json"]},
    "lease_id": "l" * 32, "attempt": 1, "expires_ts": 1_800_000_090, "lease_s": 90, "gpus": [0],
}


def test_a_grant_reads_back_typed_and_writes_the_same_json() -> None:
    grant = Grant.from_wire(GRANT)
    assert (grant.job.status, grant.trainer.argv[1], grant.expires_ts, grant.gpus) == ("claimed", "-m", 1_800_000_090.0, [0])
    wire = grant.to_wire()
    assert {k: wire[k] for k in GRANT if k not in ("job", "trainer")} == {k: v for k, v in GRANT.items() if k not in ("job", "trainer")}
    assert Grant.from_wire(wire) == grant


def test_fields_a_newer_coordinator_adds_are_ignored() -> None:
    newer = {**GRANT, "deadline_ts": 5.0, "trainer": {**GRANT["trainer"], "env": {"X": "1"}}}
    assert Grant.from_wire(newer) == Grant.from_wire(GRANT)


@pytest.mark.parametrize(("change", "named"), [
    ({"lease_id": 7}, "field 'job.lease_id' must be a string"),
    ({"attempt": True}, "field 'job.attempt' must be an integer"),
    ({"gpus": ["0"]}, "field 'job.gpus[0]' must be an integer"),
    ({"trainer": {"name": "gbt", "argv": "python -m x"}}, "field 'job.trainer.argv' must be a list"),
    ({"job": {"id": "x", "name": "y"}}, "field 'job.job.status' is missing"),
    ({"expires_ts": float("nan")}, "field 'job.expires_ts' must be a finite number"),
])
def test_a_wrong_type_or_a_missing_field_is_a_bad_request_naming_it(change: dict[str, Any], named: str) -> None:
    with pytest.raises(BadRequestError, match=named.replace("[", r"\[").replace("]", r"\]")):
        ClaimReply.from_wire({"ok": True, "job": {**GRANT, **change}})


def test_optional_fields_take_null_and_defaults() -> None:
    assert ClaimReply.from_wire({"ok": True, "job": None}).job is None
    assert UploadUrlReply.from_wire({"ok": True, "exists": True, "key": "k"}).url is None
    assert FailRequest.from_wire({"job_id": "j", "lease_id": "l", "cause": "app"}).exit_code is None
    with pytest.raises(BadRequestError, match="field 'expires_ts' is missing"):
        RenewReply.from_wire({"ok": True})
    with pytest.raises(BadRequestError, match="must be a JSON object"):
        RenewReply.from_wire([1])


def test_free_form_json_fields_take_any_object_but_must_be_objects() -> None:
    hyper = {"lr": 0.1, "layers": [64, 32], "opt": {"name": "adam"}, "note": None}
    grant = Grant.from_wire({**GRANT, "trainer": {**GRANT["trainer"], "hyper": hyper}})
    assert grant.trainer.hyper == hyper
    with pytest.raises(BadRequestError, match=r"field 'job\.spec' must be an object, not list"):
        ClaimReply.from_wire({"ok": True, "job": {**GRANT, "spec": [1]}})
    with pytest.raises(BadRequestError, match=r"field 'progress' must be an object, not str"):
        RenewRequest.from_wire({"job_id": "j", "lease_id": "l", "progress": "50%"})
    reports = [[1, 2.5, {"step": 3}], "not a triple"]  # history: a malformed report is left out, never fatal
    assert RenewRequest.from_wire({"job_id": "j", "lease_id": "l", "progress_reports": reports}).progress_reports == [
        (1, 2.5, {"step": 3})]


@pytest.mark.parametrize("bad", [{}, {"wall_s": -1, "cpu_s": 1, "max_rss_bytes": 1},
                                 {"wall_s": 1, "cpu_s": "x", "max_rss_bytes": 1},
                                 {"wall_s": float("nan"), "cpu_s": 1, "max_rss_bytes": 1},
                                 {"wall_s": 1, "cpu_s": 1, "max_rss_bytes": 1, "gpu_mem_max_bytes": -1}, [1, 2], "x"])
def test_a_malformed_usage_is_left_out_whole_and_the_request_still_reads(bad: object) -> None:
    done = CompleteRequest.from_wire({"job_id": "j", "lease_id": "l", "sha256": "a", "size": 1, "usage": bad})
    assert (done.job_id, done.usage) == ("j", None)
    good = {"wall_s": 1, "cpu_s": 0.5, "max_rss_bytes": 10, "gpu_mem_max_bytes": None}
    assert FailRequest.from_wire({"job_id": "j", "lease_id": "l", "usage": good}).usage == Usage(1.0, 0.5, 10)


def test_malformed_progress_reports_are_left_out_one_by_one_and_past_the_cap() -> None:
    reports = [[0, 1.0, {}], [1, float("nan"), {}], [2, 1.0, "r"], [3, 1.0, {str(k): k for k in range(201)}],
               [4, 1.0], [True, 1.0, {}], [5, 2, {"loss": 0.5}]]
    read = RenewRequest.from_wire({"job_id": "j", "lease_id": "l", "progress_reports": reports})
    assert read.progress_reports == [(5, 2.0, {"loss": 0.5})]
    many = [[i, 1.0, {}] for i in range(1, REPORTS_PER_REQUEST + 50)]
    read = RenewRequest.from_wire({"job_id": "j", "lease_id": "l", "progress_reports": many})
    assert read.progress_reports is not None and len(read.progress_reports) == REPORTS_PER_REQUEST
    assert RenewRequest.from_wire({"job_id": "j", "lease_id": "l", "progress_reports": "x"}).progress_reports is None


def test_progress_and_metrics_with_too_many_keys_are_refused_naming_the_field() -> None:
    wide = {str(k): k for k in range(201)}
    with pytest.raises(BadRequestError, match="field 'progress' has too many keys"):
        RenewRequest.from_wire({"job_id": "j", "lease_id": "l", "progress": wide})
    with pytest.raises(BadRequestError, match="field 'metrics' has too many keys"):
        CompleteRequest.from_wire({"job_id": "j", "lease_id": "l", "sha256": "a", "size": 1, "metrics": wide})


@pytest.mark.parametrize("cause", ["lost", "cancelled", "boom", 3])
def test_a_cause_an_agent_may_not_report_is_refused_naming_those_it_may(cause: object) -> None:
    with pytest.raises(BadRequestError, match="field 'cause' must be one of app, oom, preempted, shutdown, stalled, timeout"):
        FailRequest.from_wire({"job_id": "j", "lease_id": "l", "cause": cause})
    assert FailRequest.from_wire({"job_id": "j", "lease_id": "l", "cause": "stalled"}).cause is Cause.STALLED


def test_the_granted_checkpoint_is_typed_and_a_malformed_one_is_named() -> None:
    given = {"url": "http://s3/x", "sha256": "a" * 64, "size": 10, "attempt": 1, "saved_ts": 5, "progress": {"step": 2}}
    checkpoint = Grant.from_wire({**GRANT, "checkpoint": given}).checkpoint
    assert checkpoint == GrantedCheckpoint(url="http://s3/x", sha256="a" * 64, size=10, attempt=1, saved_ts=5.0,
                                           progress={"step": 2})
    with pytest.raises(BadRequestError, match=r"field 'job\.checkpoint\.url' is missing"):
        ClaimReply.from_wire({"ok": True, "job": {**GRANT, "checkpoint": {"sha256": "a", "size": 1}}})


def test_typed_object_values_are_checked_each_by_name() -> None:
    health = {"state": "online", "ts": 1.0, "jobs_by_status": {"pending": 2},
              "checks": {"database": {"ok": True, "detail": "fine", "checked_ts": 1.0}},
              "coordinators": [{"id": "c", "host": "h", "version": "1", "role": "leader", "started_ts": 0,
                                "heartbeat_ts": 1, "alive": True}]}
    read = Health.from_wire(health)
    assert (read.jobs_by_status, read.checks["database"].ok, read.coordinators[0].role) == ({"pending": 2}, True, "leader")
    assert Health.from_wire(read.to_wire()) == read
    with pytest.raises(BadRequestError, match=r"field 'jobs_by_status\.pending' must be an integer"):
        Health.from_wire({**health, "jobs_by_status": {"pending": "2"}})
    with pytest.raises(BadRequestError, match=r"field 'checks\.store\.detail' is missing"):
        Health.from_wire({**health, "checks": {"store": {"ok": False, "checked_ts": 1.0}}})


def test_fields_sent_only_when_set_are_left_out_while_none_and_read_back_as_none() -> None:
    assert HostStatus(state=Presence.OFFLINE).to_wire() == {"state": "offline"}  # the will: the state alone
    assert LogBatch(job_id="j", lines=["a"], ts=1.0).to_wire() == {"job_id": "j", "lines": ["a"], "ts": 1.0}
    batch = LogBatch(job_id="j", lines=["a"], ts=1.0, attempt=2)
    assert LogBatch.from_wire(batch.to_wire()) == batch
    start = CheckpointStartRequest("j", "l", resumed=False, note="fresh")
    assert set(start.to_wire()) == {"job_id", "lease_id", "resumed", "note"}
    assert "usage" not in FailRequest("j", "l").to_wire() and FailRequest("j", "l", usage=Usage(1.0, 1.0, 1)).to_wire()["usage"]


def test_a_control_message_or_a_nudge_of_the_wrong_shape_is_named() -> None:
    control = ControlMessage(ControlAction.CANCEL, "j", "l")
    assert ControlMessage.from_wire(control.to_wire()) == control
    with pytest.raises(BadRequestError, match="field 'lease_id' is missing"):
        ControlMessage.from_wire({"action": "cancel", "job_id": "j"})
    assert Nudge.from_wire({"reason": "work", "ts": 1}).hosts is None
    with pytest.raises(BadRequestError, match=r"field 'hosts\[1\]' must be a string"):
        Nudge.from_wire({"reason": "work", "ts": 1, "hosts": ["a", 2]})


def test_an_enum_field_goes_out_as_its_value_and_an_unknown_value_is_named() -> None:
    check = Check("broker", Outcome.PASS, "connected")
    assert check.to_wire() == {"name": "broker", "outcome": "pass", "detail": "connected", "fix": ""}
    assert Check.from_wire(check.to_wire()) == check
    with pytest.raises(BadRequestError, match="field 'outcome' must be one of pass/fail/info/skip"):
        Check.from_wire({**check.to_wire(), "outcome": "maybe"})
