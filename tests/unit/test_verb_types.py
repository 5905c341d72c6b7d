"""The verb table names each verb's request and reply types as text, imported on first use (a command loads only
its own verbs' messages); the annotation of each spec names the same types for mypy. These tests hold the two
together, and show what a query loads."""

from __future__ import annotations

import subprocess
import sys
import typing
from typing import Any

from mqfleet.wire import codec, health, hosts, job_detail, job_listing, replies, requests, verbs
from mqfleet.wire.topics import Role, Verb
from mqfleet.wire.verbs import VERBS, VerbSpec


def annotated_types() -> dict[str, tuple[object, ...]]:
    """Each spec constant's annotated (request, reply) types, read from mqfleet/wire/verbs.py's annotations."""
    names: dict[str, object] = {"VerbSpec": VerbSpec}
    for module in (codec, health, hosts, job_detail, job_listing, replies, requests):
        names.update(vars(module))
    hints = typing.get_type_hints(verbs, localns=names)
    return {name: typing.get_args(hint) for name, hint in hints.items() if typing.get_origin(hint) is VerbSpec}


def test_every_spec_names_the_types_its_annotation_gives() -> None:
    annotated = annotated_types()
    specs = {name: value for name, value in vars(verbs).items() if isinstance(value, VerbSpec)}

    assert set(annotated) == set(specs) and len(specs) == len(VERBS)
    assert {name: (spec.request, spec.reply) for name, spec in specs.items()} == annotated


def test_the_reader_of_the_annotations_sees_a_mismatch() -> None:
    wrong: VerbSpec[Any, Any] = VerbSpec(Verb.HEALTH, Role.QUERY, "codec.NoFields", "hosts.WorkersReply", remembered=False)
    assert (wrong.request, wrong.reply) != annotated_types()["HEALTH"]


#: What a process loads to ask `health`: the client, the verb table, and `health`'s own messages.
ASK_HEALTH = """\
import sys
from mqfleet.client import FleetClient
from mqfleet.wire import verbs
verbs.HEALTH.request, verbs.HEALTH.reply
print(" ".join(sorted(m for m in sys.modules if m.startswith("mqfleet.wire."))))
"""


def test_a_health_query_loads_no_other_verbs_messages() -> None:
    loaded = subprocess.run([sys.executable, "-c", ASK_HEALTH], capture_output=True, text=True, check=True,
                            timeout=60).stdout.split()

    assert "mqfleet.wire.health" in loaded
    assert [m for m in loaded if m in ("mqfleet.wire.requests", "mqfleet.wire.replies", "mqfleet.wire.hosts",
                                       "mqfleet.wire.job_detail", "mqfleet.wire.published", "mqfleet.wire.advert")] == []
