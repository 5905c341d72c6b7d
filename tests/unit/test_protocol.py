"""The wire vocabulary: topic layout, payload decoding and field checks."""

from __future__ import annotations

import pytest

from mqfleet.coordinator.verbs.handlers import HANDLERS
from mqfleet.errors import BadRequestError, DecodeError
from mqfleet.wire.topics import Role, Topics, Verb, decode, encode, field
from mqfleet.wire.verbs import VERBS


def test_every_agent_topic_sits_under_the_hosts_own_path_so_an_acl_can_pin_it() -> None:
    t = Topics("mqfleet")
    for topic in (t.advert("a"), t.status("a"), t.log("a", "j1")):
        assert topic.startswith("mqfleet/hosts/a/")
    assert t.rpc(Role.AGENT, "a", Verb.CLAIM) == "mqfleet/rpc/agent/a/claim"


def test_rpc_topics_parse_back_into_role_client_and_verb() -> None:
    t = Topics("t1/mqfleet")
    assert t.parse_rpc(t.rpc(Role.QUERY, "cli-x", Verb.JOBS)) == ("query", "cli-x", "jobs")
    assert t.parse_rpc("t1/mqfleet/rpc/agent/a") is None
    assert t.parse_rpc("t1/mqfleet/rpc/agent//claim") is None
    assert t.parse_rpc("other/rpc/agent/a/claim") is None


def test_the_coordinator_handles_exactly_the_verbs_of_the_wire_table_each_with_its_wire_spec() -> None:
    assert set(HANDLERS) == set(VERBS) == set(Verb)
    assert all(handling.wire is VERBS[verb] for verb, handling in HANDLERS.items())


def test_client_ids_of_other_prefixes_do_not_collide_with_the_default_fleet() -> None:
    assert Topics("mqfleet").client_id("coordinator") == "coordinator"
    assert Topics("t1/mqfleet").client_id("coordinator") == "coordinator@t1_mqfleet"


def test_encode_gives_compact_sorted_json_that_decode_reads_back() -> None:
    payload = encode({"b": 1, "a": [1, 2]})
    assert payload == b'{"a":[1,2],"b":1}'
    assert decode(payload) == {"a": [1, 2], "b": 1}


@pytest.mark.parametrize("payload", [b"not json", b"[1]", b'"text"', b"\xff\xfe", b"{"])
def test_decode_refuses_anything_but_a_json_object(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(payload)


def test_decode_refuses_a_payload_over_the_limit_before_parsing_it() -> None:
    with pytest.raises(DecodeError, match="over the 10-byte limit"):
        decode(b'{"a": "0123456789"}', max_bytes=10)


def test_field_checks_presence_and_type_and_names_the_field() -> None:
    req = {"n": 3, "flag": True, "name": "x"}
    assert field(req, "n", int) == 3
    assert field(req, "n", float) == 3.0
    assert field(req, "missing", str, "default") == "default"
    with pytest.raises(BadRequestError, match="'missing' is required"):
        field(req, "missing", str)
    with pytest.raises(BadRequestError, match="'flag' must be an integer, not a boolean"):
        field(req, "flag", int)
    with pytest.raises(BadRequestError, match="'name' must be an integer, not str"):
        field(req, "name", int)
