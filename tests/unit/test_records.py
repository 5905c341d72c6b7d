"""The coordinator's published records (mqfleet/wire/published.py): their JSON is the one documented, and a reader
checking one back with `from_wire` gets it whole, or a BadRequestError naming the wrong field."""

from __future__ import annotations

import pytest

from mqfleet.errors import BadRequestError
from mqfleet.lifecycle import JobStatus
from mqfleet.wire.published import ControlAction, ControlMessage, HostEvent, JobEvent, Nudge, StoredObject
from mqfleet.wire.topics import decode, encode


def test_a_job_event_names_its_old_status_from_on_the_wire_and_reads_back_whole() -> None:
    event = JobEvent(seq=3, ts=1.5, job_id="j", from_status=JobStatus.PENDING, to=JobStatus.CLAIMED, reason="claimed by h",
                     host="h")
    wire = decode(encode(event.to_wire()))
    assert wire == {"seq": 3, "ts": 1.5, "job_id": "j", "from": "pending", "to": "claimed", "reason": "claimed by h",
                    "host": "h"}
    assert JobEvent.from_wire(wire) == event
    added = JobEvent(seq=1, ts=1.0, job_id="j", from_status=None, to=JobStatus.PENDING, reason="added")
    assert JobEvent.from_wire(decode(encode(added.to_wire()))) == added


def test_a_job_event_with_a_mistyped_field_is_refused_naming_it() -> None:
    wire = JobEvent(seq=3, ts=1.5, job_id="j", from_status=JobStatus.PENDING, to=JobStatus.CLAIMED, reason="r").to_wire()
    with pytest.raises(BadRequestError, match="'seq'"):
        JobEvent.from_wire({**wire, "seq": "3"})
    with pytest.raises(BadRequestError, match="'from' must be one of pending/claimed/.*, not 7"):
        JobEvent.from_wire({**wire, "from": 7})
    with pytest.raises(BadRequestError, match="'from' is missing"):
        JobEvent.from_wire({k: v for k, v in wire.items() if k != "from"})
    with pytest.raises(BadRequestError, match="'to' is missing"):
        JobEvent.from_wire({k: v for k, v in wire.items() if k != "to"})


def test_a_host_event_reads_like_a_job_event_with_its_kind_and_jobs() -> None:
    event = HostEvent(seq=9, ts=2.0, host="h", to="quarantined", reason="3 consecutive failed attempts", jobs=["a", "b"])
    wire = event.to_wire()
    assert (wire["kind"], wire["job_id"], wire["from"], wire["to"]) == ("host_quarantined", None, None, "quarantined")
    assert HostEvent.from_wire(decode(encode(wire))) == event
    with pytest.raises(BadRequestError, match=r"'jobs\[1\]'"):
        HostEvent.from_wire({**wire, "jobs": ["a", 2]})


def test_a_nudge_leaves_hosts_and_jobs_out_unless_given() -> None:
    assert Nudge(reason="work", ts=1.0).to_wire() == {"reason": "work", "ts": 1.0}
    named = Nudge(reason="reload", ts=1.0, hosts=["h1"], jobs=["j"])
    assert named.to_wire() == {"reason": "reload", "ts": 1.0, "hosts": ["h1"], "jobs": ["j"]}
    assert Nudge.from_wire(named.to_wire()) == named
    assert Nudge.from_wire({"reason": "work", "ts": 1.0}) == Nudge(reason="work", ts=1.0)


def test_a_control_message_and_a_stored_object_name_a_missing_or_mistyped_field() -> None:
    control = ControlMessage(action=ControlAction.CANCEL, job_id="j", lease_id="l")
    assert ControlMessage.from_wire(control.to_wire()) == control
    with pytest.raises(BadRequestError, match="'lease_id' is missing"):
        ControlMessage.from_wire({"action": "cancel", "job_id": "j"})
    stored = StoredObject(sha256="ab" * 32, size=5, key="artifacts/x", verified_ts=1.0)
    assert StoredObject.from_wire(stored.to_wire()) == stored
    with pytest.raises(BadRequestError, match="'size'"):
        StoredObject.from_wire({**stored.to_wire(), "size": True})
