"""docs/INTERNALS.md's wire tables against the code: the verb table lists every verb, and the fields it
names for the agent verbs are exactly the fields of their typed messages (mqfleet/wire/requests.py), so the
doc cannot drift from what is sent again."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from mqfleet.lifecycle import AGENT_CAUSES
from mqfleet.wire.advert import Advert, Gpu
from mqfleet.wire.codec import WireMessage
from mqfleet.wire.published import ControlMessage, HostEvent, JobEvent, Nudge
from mqfleet.wire.replies import REPLIES, ArtifactRecord, JobDetail, Worker
from mqfleet.wire.requests import (
    AGENT_MESSAGES,
    OPERATOR_REQUESTS,
    OTHER_REQUESTS,
    CheckResult,
    CoordinatorPeer,
    Grant,
    GrantedCheckpoint,
    Health,
    HostStatus,
    JobRow,
    LogBatch,
    TrainerRef,
)
from mqfleet.wire.topics import Verb

DOC = Path(__file__).resolve().parents[2] / "docs" / "INTERNALS.md"


def verb_table() -> dict[str, tuple[str, str]]:
    """verb -> (request cell, reply cell) of the table under "Wire payloads"."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Wire payloads"):]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("verb", "---") or set(cells[0]) <= {"-"}:
            continue
        for verb in cells[0].split("/"):
            rows[verb.strip()] = (cells[1], cells[2])
        if not line.startswith("|"):
            break
    return rows


def named_fields(cell: str) -> set[str]:
    """The field names a cell lists: the first word of each comma-separated item in its `code` spans."""
    names = set()
    for span in re.findall(r"`([^`]*)`", cell):
        if span.startswith("["):  # a value's shape (`[seq, ts, report]`), not field names
            continue
        for item in re.split(r"[,{}]", span):
            m = re.match(r"\s*([a-z_][a-z0-9_]*)\b", item)
            if m and m.group(1) not in ("true", "false", "null"):
                names.add(m.group(1))
    return names


def field_names(cls: type[WireMessage]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_the_table_has_a_row_for_every_verb() -> None:
    assert sorted(set(v.value for v in Verb) - set(verb_table())) == []


@pytest.mark.parametrize("verb", sorted(v for v in AGENT_MESSAGES if AGENT_MESSAGES[v][0] is not None))
def test_an_agent_verbs_request_fields_are_its_messages_fields(verb: str) -> None:
    request_cls = AGENT_MESSAGES[verb][0]
    assert request_cls is not None
    assert named_fields(verb_table()[verb][0]) == field_names(request_cls)


@pytest.mark.parametrize("verb", ["renew", "upload_url", "complete", "fail"])
def test_an_agent_verbs_reply_fields_are_its_messages_fields(verb: str) -> None:
    reply_cell = verb_table()[verb][1]
    assert field_names(AGENT_MESSAGES[verb][1]) <= named_fields(reply_cell)


def test_the_grant_and_its_trainer_are_listed_field_for_field() -> None:
    cell = verb_table()["claim"][1]
    grant = re.search(r"the grant `\{([^}]*)\}`", cell)
    trainer = re.search(r"`trainer` is `\{([^}]*)\}`", cell)
    assert grant and trainer, "the claim row names the grant's and the trainer's fields"
    assert named_fields(f"`{grant.group(1)}`") == field_names(Grant)
    assert named_fields(f"`{trainer.group(1)}`") == field_names(TrainerRef)


def test_the_grants_checkpoint_is_listed_field_for_field() -> None:
    checkpoint = re.search(r"`checkpoint` is null or (`\{.*?\}`)", verb_table()["claim"][1])
    assert checkpoint, "the claim row names the granted checkpoint's fields"
    assert named_fields(checkpoint.group(1)) == field_names(GrantedCheckpoint)


def test_the_health_rows_checks_and_coordinators_are_listed_field_for_field() -> None:
    cell = verb_table()["health"][1]
    check = re.search(r"checks` \(`\{database, store\}`: (`\{[^}]*\}`)\)", cell)
    peer = re.search(r"coordinators` \(`\[\{([^}]*)\}\]`", cell)
    assert check and peer, "the health row names the fields of a check and of a coordinator"
    assert named_fields(check.group(1)) == field_names(CheckResult)
    assert named_fields(f"`{peer.group(1)}`") == field_names(CoordinatorPeer)
    assert {"checks", "coordinators", "jobs_by_status"} <= field_names(Health)


def test_the_causes_an_agent_may_report_are_the_ones_the_fail_row_lists() -> None:
    listed = re.search(r"cause \(([a-z/]+)\)", verb_table()["fail"][0])
    assert listed, "the fail row lists the causes in parentheses"
    assert set(listed.group(1).split("/")) == {c.value for c in AGENT_CAUSES}


def test_the_field_reader_sees_what_the_doc_lists() -> None:
    assert named_fields("`exists: true, key`, or `exists: false, url, method: \"PUT\"`") == {"exists", "key", "url", "method"}


@pytest.mark.parametrize("verb", sorted(OPERATOR_REQUESTS))
def test_an_operator_verbs_request_fields_are_its_messages_fields(verb: str) -> None:
    cell = verb_table()[verb][0]
    if verb in ("cancel", "requeue"):  # one row for both: requeue adds its own after "requeue:"
        shared, _, own = cell.partition("requeue:")
        cell = shared if verb == "cancel" else cell
    assert named_fields(cell) == field_names(OPERATOR_REQUESTS[verb])


@pytest.mark.parametrize("verb", sorted(OTHER_REQUESTS))
def test_a_checkpoint_or_query_verbs_request_fields_are_its_messages_fields(verb: str) -> None:
    assert named_fields(verb_table()[verb][0]) == field_names(OTHER_REQUESTS[verb])


@pytest.mark.parametrize("verb", sorted(REPLIES))
def test_every_field_of_a_typed_reply_is_in_its_verbs_reply_cell(verb: str) -> None:
    cell = verb_table()[verb][1]
    assert field_names(REPLIES[verb]) - named_fields(cell) == set()


@pytest.mark.parametrize(("verb", "record"), [("job", JobDetail), ("workers", Worker), ("artifacts", ArtifactRecord)])
def test_the_records_a_reply_carries_are_listed_field_for_field(verb: str, record: type[WireMessage]) -> None:
    own = field_names(record) - (field_names(JobRow) if issubclass(record, JobRow) else set())
    assert own - named_fields(verb_table()[verb][1]) == set()


def topic_payloads() -> dict[str, str]:
    """topic -> payload cell of the table under "Topics", the parenthesised remarks left out."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Topics"):text.index("## Capability advert")]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`{prefix}"):
            rows[cells[0].strip("`")] = re.sub(r"\([^)]*\)", "", cells[3])
    return rows


@pytest.mark.parametrize(("topic", "cls"), [
    ("{prefix}/hosts/{host}/status", HostStatus),
    ("{prefix}/hosts/{host}/log/{job_id}", LogBatch),
    ("{prefix}/work", Nudge),
])
def test_what_agents_and_the_coordinator_publish_is_listed_field_for_field(topic: str, cls: type[WireMessage]) -> None:
    assert named_fields(topic_payloads()[topic]) == field_names(cls)


def test_the_control_message_is_listed_field_for_field() -> None:
    text = DOC.read_text(encoding="utf-8")
    payload = re.search(r"topic `mqfleet/control/\{host\}`, payload\s+`\{([^}]*)\}`", text)
    assert payload, "the control paragraph shows its payload"
    assert set(re.findall(r'"([a-z_]+)":', payload.group(1))) == field_names(ControlMessage)


def test_the_capability_advert_is_listed_field_for_field() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Capability advert"):text.index("## Trainers")]
    listed = section[section.index("reports, republished"):section.index("Detection")]
    gpu = re.search(r"\(each (`[^`]*`)\)", listed)
    assert gpu, "the advert section lists a GPU's fields"
    every = {f.name for f in dataclasses.fields(Advert)} - {"extra"}  # extra: unknown fields kept, not a field
    assert named_fields(listed.replace(gpu.group(0), "")) == every
    assert named_fields(gpu.group(1)) == {f.name for f in dataclasses.fields(Gpu)} - {"extra"}


def publish_fields(marker: str) -> list[set[str]]:
    """The field sets (`{...}` code spans) of the INTERNALS paragraph that starts with `marker`."""
    text = DOC.read_text(encoding="utf-8")
    paragraph = text[text.index(marker):].split("\n\n", 1)[0]
    spans = re.findall(r"`\{([^`]*)\}`", paragraph)
    return [named_fields("`{" + span.replace('"', "") + "}`") for span in spans]


def test_the_events_paragraph_lists_a_job_events_and_a_host_events_fields() -> None:
    job_event = JobEvent(seq=1, ts=1.0, job_id="j", from_status=None, to="pending", reason="added")
    host_event = HostEvent(seq=1, ts=1.0, host="h", to="quarantined", reason="r", jobs=["a"])
    assert publish_fields("Events, coordinator") == [set(job_event.to_wire()), set(host_event.to_wire())]
