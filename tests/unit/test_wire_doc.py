"""docs/INTERNALS.md's wire tables against the code: the verb table has a row for every verb of the verb table
in mqfleet/wire/verbs.py, with its role and whether its reply is remembered, the request fields it names are
exactly the fields of the verb's request type and the reply fields it names include every field of its reply
type, so the doc cannot drift from what is sent again."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import NamedTuple

import pytest

from mqfleet.lifecycle import AGENT_CAUSES, JobStatus
from mqfleet.wire.advert import Advert, Gpu
from mqfleet.wire.codec import WireMessage
from mqfleet.wire.published import ControlMessage, HostEvent, HostStatus, JobEvent, LogBatch, Nudge
from mqfleet.wire.replies import ArtifactRecord, JobDetail, Worker
from mqfleet.wire.requests import (
    CheckResult,
    CoordinatorPeer,
    Grant,
    GrantedCheckpoint,
    Health,
    JobRow,
    TrainerRef,
)
from mqfleet.wire.topics import Verb
from mqfleet.wire.verbs import VERBS

DOC = Path(__file__).resolve().parents[2] / "docs" / "INTERNALS.md"


class Row(NamedTuple):
    """One verb's row of the table under "Wire payloads"."""

    role: str
    request: str
    reply: str
    remembered: str


def verb_table() -> dict[str, Row]:
    """verb -> its row of the table under "Wire payloads" (a row of two verbs, `cancel / requeue`, is both's)."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Wire payloads"):]
    rows: dict[str, Row] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("verb", "---") or set(cells[0]) <= {"-"}:
            continue
        for verb in cells[0].split("/"):
            rows[verb.strip()] = Row(*cells[1:])
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


def test_the_verb_table_has_one_entry_per_verb_and_the_doc_one_row_per_verb() -> None:
    assert set(VERBS) == set(Verb) and all(spec.verb is verb for verb, spec in VERBS.items())
    assert sorted(verb_table()) == sorted(v.value for v in Verb)


@pytest.mark.parametrize("verb", list(Verb), ids=lambda v: v.value)
def test_a_verbs_row_names_its_role_and_whether_its_reply_is_remembered(verb: Verb) -> None:
    row = verb_table()[verb.value]
    assert (row.role, row.remembered) == (VERBS[verb].role.value, "yes" if VERBS[verb].remembered else "no")


@pytest.mark.parametrize("verb", list(Verb), ids=lambda v: v.value)
def test_a_verbs_request_fields_are_its_request_types_fields(verb: Verb) -> None:
    cell = verb_table()[verb.value].request
    if verb is Verb.CANCEL:  # one row for cancel and requeue: requeue adds its own after "requeue:"
        cell = cell.partition("requeue:")[0]
    assert named_fields(cell) == field_names(VERBS[verb].request)


@pytest.mark.parametrize("verb", list(Verb), ids=lambda v: v.value)
def test_every_field_of_a_verbs_reply_type_is_in_its_reply_cell(verb: Verb) -> None:
    assert field_names(VERBS[verb].reply) - named_fields(verb_table()[verb.value].reply) == set()


def test_the_grant_and_its_trainer_are_listed_field_for_field() -> None:
    cell = verb_table()["claim"].reply
    grant = re.search(r"the grant `\{([^}]*)\}`", cell)
    trainer = re.search(r"`trainer` is `\{([^}]*)\}`", cell)
    assert grant and trainer, "the claim row names the grant's and the trainer's fields"
    assert named_fields(f"`{grant.group(1)}`") == field_names(Grant)
    assert named_fields(f"`{trainer.group(1)}`") == field_names(TrainerRef)


def test_the_grants_checkpoint_is_listed_field_for_field() -> None:
    checkpoint = re.search(r"`checkpoint` is null or (`\{.*?\}`)", verb_table()["claim"].reply)
    assert checkpoint, "the claim row names the granted checkpoint's fields"
    assert named_fields(checkpoint.group(1)) == field_names(GrantedCheckpoint)


def test_the_health_rows_checks_and_coordinators_are_listed_field_for_field() -> None:
    cell = verb_table()["health"].reply
    check = re.search(r"checks` \(`\{database, store\}`: (`\{[^}]*\}`)\)", cell)
    peer = re.search(r"coordinators` \(`\[\{([^}]*)\}\]`", cell)
    assert check and peer, "the health row names the fields of a check and of a coordinator"
    assert named_fields(check.group(1)) == field_names(CheckResult)
    assert named_fields(f"`{peer.group(1)}`") == field_names(CoordinatorPeer)
    assert {"checks", "coordinators", "jobs_by_status"} <= field_names(Health)


def test_the_causes_an_agent_may_report_are_the_ones_the_fail_row_lists() -> None:
    listed = re.search(r"cause \(([a-z/]+)\)", verb_table()["fail"].request)
    assert listed, "the fail row lists the causes in parentheses"
    assert set(listed.group(1).split("/")) == {c.value for c in AGENT_CAUSES}


def test_the_field_reader_sees_what_the_doc_lists() -> None:
    assert named_fields("`exists: true, key`, or `exists: false, url, method: \"PUT\"`") == {"exists", "key", "url", "method"}


@pytest.mark.parametrize(("verb", "record"), [("job", JobDetail), ("workers", Worker), ("artifacts", ArtifactRecord)])
def test_the_records_a_reply_carries_are_listed_field_for_field(verb: str, record: type[WireMessage]) -> None:
    own = field_names(record) - (field_names(JobRow) if issubclass(record, JobRow) else set())
    assert own - named_fields(verb_table()[verb].reply) == set()


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
    job_event = JobEvent(seq=1, ts=1.0, job_id="j", from_status=None, to=JobStatus.PENDING, reason="added")
    host_event = HostEvent(seq=1, ts=1.0, host="h", to="quarantined", reason="r", jobs=["a"])
    assert publish_fields("Events, coordinator") == [set(job_event.to_wire()), set(host_event.to_wire())]
