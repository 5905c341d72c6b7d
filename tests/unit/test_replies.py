"""The typed replies (mqfleet/wire/replies.py): what the coordinator builds reads back whole,
and a reply with a field missing or mistyped is refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from mqfleet.errors import BadRequestError
from mqfleet.wire.replies import (
    AttemptDetail,
    CheckpointDetail,
    CheckpointLatest,
    GcObject,
    GcReply,
    HostUsage,
    JobDetail,
    JobDetailReply,
    JobsReply,
    Quarantine,
    Worker,
    WorkersReply,
    reply_json,
)
from mqfleet.wire.reports import Usage
from mqfleet.wire.requests import CheckResult, Health, Presence
from mqfleet.wire.topics import JsonObject, Verb
from mqfleet.wire.verbs import VERBS

JOB: dict[str, Any] = {
    "id": "j" * 64, "name": "gbt-1", "status": "running", "model": "gbt", "mode": "train", "host": "h1", "attempts": 1,
    "max_attempts": 3, "priority": 0, "artifact": None, "error": None, "in_manifest": True, "progress": {"loss": 0.5},
    "created_ts": 1.0, "updated_ts": 2.0, "lease_expires_ts": 92.0, "timeout_s": None, "stall_s": 30.0,
    "retry_after_ts": None, "unsatisfied": None,
}


def test_a_job_detail_reads_back_typed_and_writes_the_same_json() -> None:
    detail = JobDetail(
        **JOB, spec={"hyper": {"lr": 0.1}}, outputs=["model.json"],
        attempts_detail=[AttemptDetail(number=1, host="h1", usage=Usage(wall_s=1.5, cpu_s=1.0, max_rss_bytes=10))],
        checkpoint=CheckpointDetail(latest=CheckpointLatest(attempt=1, sha256="a" * 64, size=3, saved_ts=5.0)),
    )
    wire = reply_json(JobDetailReply(job=detail))
    assert wire["ok"] is True and {k: wire["job"][k] for k in JOB} == JOB
    back = JobDetailReply.from_wire(wire)
    assert back.job == detail
    assert back.job.attempts_detail[0].usage == Usage(wall_s=1.5, cpu_s=1.0, max_rss_bytes=10)


def test_workers_and_health_read_back_whole() -> None:
    worker = Worker(id="h1", online=True, draining=False, advert={"slots": 2}, slots=2, jobs=["j"], quarantined=True,
                    quarantine=Quarantine(since_ts=3.0, reason="3 failures", jobs=["a"]), usage=HostUsage(attempts=2))
    assert WorkersReply.from_wire(WorkersReply(workers=[worker]).to_wire()).workers == [worker]
    health = Health(state=Presence.ONLINE, ts=2.0, jobs_by_status={"pending": 1}, last_refused_manifest="x" * 10_000,
                    checks={"database": CheckResult(ok=True, detail="1 jobs readable", checked_ts=1.0)})
    assert Health.from_wire(health.to_wire()) == health


def test_a_jobs_page_passes_its_rows_through_and_total_is_null_when_not_counted() -> None:
    page = JobsReply(jobs=[JOB], next_after=7)
    assert page.to_wire() == {"jobs": [JOB], "next_after": 7, "next_offset": None, "total": None}
    assert JobsReply.from_wire(page.to_wire()) == page


@pytest.mark.parametrize(("verb", "wire", "named"), [
    ("job", {"job": {**JOB, "attempts_detail": [{"number": "1"}]}}, "field 'job.attempts_detail[0].number' must be an integer"),
    ("workers", {"workers": [{"id": "h1", "online": True}]}, "field 'workers[0].draining' is missing"),
    ("gc", {"dry_run": True, "count": 1, "bytes": 2, "kept": 0, "ignored": 0, "objects": [{"key": 1, "size": 2}]},
     "field 'objects[0].key' must be a string"),
    ("health", {"state": "online", "ts": "now"}, "field 'ts' must be a finite number"),
    ("logs", {"job_id": "j", "attempts": [1], "lines": "x"}, "field 'lines' must be a list"),
    ("download_url", {"job_id": "j", "sha256": "a", "url": "http://x"}, "field 'expires_s' is missing"),
])
def test_a_reply_with_a_wrong_or_missing_field_is_refused_naming_it(verb: str, wire: dict[str, Any], named: str) -> None:
    with pytest.raises(BadRequestError, match=named.replace("[", r"\[").replace("]", r"\]")):
        VERBS[Verb(verb)].reply.from_wire(wire)


def test_fields_a_newer_coordinator_adds_are_ignored() -> None:
    reply = GcReply(dry_run=False, count=1, bytes=5, kept=2, ignored=0, objects=[GcObject(key="k", size=5)])
    assert GcReply.from_wire({**reply.to_wire(), "freed_ts": 9.0}) == reply


def test_to_wire_converts_nested_messages_and_passes_free_form_json_on_without_copying_it() -> None:
    rows: list[JsonObject] = [{**JOB} for _ in range(3)]
    page = JobsReply(jobs=rows, total=3)
    assert page.to_wire()["jobs"] is rows, "a page's rows are encoded as they are, not walked"
    worker = Worker(id="h1", online=True, draining=False, quarantine=Quarantine(since_ts=1.0, jobs=["a"]),
                    usage=HostUsage(attempts=1))
    wire = WorkersReply(workers=[worker]).to_wire()
    assert wire["workers"][0]["quarantine"] == {"since_ts": 1.0, "reason": "", "jobs": ["a"]}
    assert wire["workers"][0]["usage"]["attempts"] == 1 and isinstance(wire["workers"][0]["usage"], dict)


def test_a_jobs_page_row_that_is_not_an_object_is_refused_naming_its_index() -> None:
    rows: list[Any] = [{"id": "a"}, {"id": "b"}, "c"]
    with pytest.raises(BadRequestError, match=r"field 'jobs\[2\]' must be an object, not str"):
        JobsReply.from_wire({"jobs": rows})
    page = [{"id": str(i)} for i in range(3)]
    assert JobsReply.from_wire({"jobs": page}).jobs is page  # rows pass through in one pass, not copied
