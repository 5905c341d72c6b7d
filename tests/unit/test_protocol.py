"""The wire vocabulary: topic layout, payload decoding, the verb table, and the codec's one field check (its bounds)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import pytest

from mqfleet.coordinator.service import Coordinator
from mqfleet.coordinator.verbs.handlers import HANDLERS
from mqfleet.errors import BadRequestError, DecodeError, InternalError, MqfleetError
from mqfleet.wire.codec import LENIENT, Bounds, WireMessage, wire_name
from mqfleet.wire.topics import Role, Topics, Verb, decode, encode
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


@dataclasses.dataclass(frozen=True)
class Bounded(WireMessage):
    count: Annotated[int, Bounds(min=1, max=10)] = 1
    name: Annotated[str, Bounds(max_chars=5)] = ""
    tags: Annotated[tuple[Annotated[str, Bounds(max_chars=3)], ...], Bounds(max_items=2)] = ()
    pair: tuple[int, float] | None = None
    seen: Annotated[list[Annotated[int, LENIENT]], Bounds(max_items=3, lenient=True)] = dataclasses.field(
        default_factory=list)
    old: str | None = dataclasses.field(default=None, metadata=wire_name("from"))


def test_the_codec_reads_bounds_from_annotations_at_any_depth_and_names_the_place() -> None:
    read = Bounded.from_wire({"count": 3, "name": "abc", "tags": ["a", "bb"], "pair": [1, 2], "from": "x"})
    assert read == Bounded(count=3, name="abc", tags=("a", "bb"), pair=(1, 2.0), old="x")
    assert read.to_wire() == {"count": 3, "name": "abc", "tags": ["a", "bb"], "pair": [1, 2.0], "seen": [], "from": "x"}
    for wire, named in [({"count": 0}, "field 'count' must be at least 1, not 0"),
                        ({"count": 11}, "field 'count' must be at most 10"),
                        ({"count": True}, "field 'count' must be an integer, not bool"),
                        ({"name": "abcdef"}, r"field 'name' is too long \(6 characters, at most 5\)"),
                        ({"tags": ["a", "b", "c"]}, "field 'tags' has 3 items, at most 2"),
                        ({"tags": ["abcd"]}, r"field 'tags\[0\]' is too long"),
                        ({"pair": [1]}, "field 'pair' must be a list of 2 items, not 1"),
                        ({"from": 1}, "field 'from' must be a string")]:
        with pytest.raises(BadRequestError, match=named):
            Bounded.from_wire(wire)


def test_a_lenient_bound_drops_what_fails_instead_of_refusing_it() -> None:
    assert Bounded.from_wire({"seen": [1, "x", 2, 3, 4]}).seen == [1, 2]  # cut to 3 items, then "x" left out
    assert Bounded.from_wire({"seen": "not a list"}).seen == []  # the field keeps its default


def test_each_wire_error_code_belongs_to_one_error_class() -> None:
    assert Coordinator is not None  # imported for the error classes its modules define (coordinator/sql/pgdialect.py)
    owner: dict[str, type[MqfleetError]] = {}
    classes: list[type[MqfleetError]] = [MqfleetError]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        code = vars(cls).get("code")
        if isinstance(code, str):
            assert code not in owner, f"{cls.__name__} and {owner.get(code, cls).__name__} both answer {code!r}"
            owner[code] = cls
    assert (owner["bad_request"], owner["internal"]) == (BadRequestError, InternalError)
