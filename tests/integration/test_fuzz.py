"""Hypothesis throws malformed, oversized and wrongly typed requests at every verb of a real coordinator.

The coordinator runs as its own process on the session's mosquitto. Requests go out in parallel batches
(many in flight at once, as a misbehaving fleet would send them) on every rpc role, under matching and
mismatched roles and unknown verbs, mixed with garbage adverts and statuses. Every request must get a
refusal (or, for a read-only query, an answer), never an `internal` error; afterwards the process is
alive, answers health, and no job's status, host or attempts moved. The fuzzing host has no job it may
run (every job is pinned to another host) and the fuzzer never holds the operator token together with
a job reference, so a correct coordinator has no legitimate reason to change any job.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mqfleet.errors import MqfleetError
from mqfleet.mqtt import BrokerConfig, Connection
from mqfleet.protocol import ROLE_OF_VERB, Role, Topics, Verb
from tests.fixtures.fleet import OPERATOR_TOKEN, Fleet, manifest_text

FUZZ_HOSTS = ["fuzz-host", "real-host"]
#: Field names the handlers read, so typed-wrong values reach real checks, not only "unknown field".
FIELDS = ["request_id", "job_id", "lease_id", "progress", "sha256", "size", "metrics", "output_tail", "cause",
          "exit_code", "error", "token", "job", "manifest", "host", "status", "lines", "state", "slots", "cuda"]
#: Over protocol.MAX_REQUEST_BYTES (256 KiB) but under what a broker accepts.
OVERSIZED = b'{"request_id": "big", "job": "' + b"x" * 300_000 + b'"}'
REPLY_WAIT_S = 15.0
BATCHES = 80

json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
wrong_refs = st.none() | st.booleans() | st.integers() | st.floats() | st.lists(json_scalars, max_size=3) | st.dictionaries(st.text(max_size=5), json_scalars, max_size=3)


@st.composite
def bodies(draw: st.DrawFn, role: Role) -> bytes:
    kind = draw(st.sampled_from(["object", "object", "object", "bytes", "not_an_object", "oversized", "empty"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "not_an_object":
        return json.dumps(draw(json_scalars | st.lists(json_values, max_size=4))).encode()
    if kind == "oversized":
        return OVERSIZED
    if kind == "empty":
        return b""
    body: dict[str, Any] = draw(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=8))
    if role is Role.OPERATOR and draw(st.booleans()):
        # The right token with every job reference wrongly typed: every check past the token gets exercised,
        # yet no random string can name (a prefix of) a real job and legitimately cancel it.
        body["token"] = OPERATOR_TOKEN
        body["job"] = draw(wrong_refs)
        body.pop("manifest", None) if draw(st.booleans()) else body.update(manifest=draw(wrong_refs))
    elif body.get("token") == OPERATOR_TOKEN:
        body["token"] = "not-the-token"
    return json.dumps(body, default=str).encode()


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str, bytes]:
    """(role, client, verb, payload): mostly a verb on its own role, sometimes a wrong role or an unknown verb."""
    verb = draw(st.sampled_from([v.value for v in Verb]) | st.sampled_from(["nope", "CLAIM", "claim.x", "__init__"]))
    right = ROLE_OF_VERB.get(Verb(verb)) if verb in Verb._value2member_map_ else None
    role = right if right is not None and draw(st.integers(0, 4)) else draw(st.sampled_from(list(Role)))
    client = draw(st.sampled_from(FUZZ_HOSTS)) if role is Role.AGENT else f"fuzz-{role.value}"
    return role.value, client, verb, draw(bodies(role))


host_messages = st.tuples(st.sampled_from(["advert", "status"]),
                          st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v, default=str).encode()))


def _snapshot(fleet: Fleet) -> dict[str, tuple[Any, ...]]:
    return {j["id"]: (j["status"], j["host"], j["attempts"], j["artifact"]) for j in fleet.client().jobs()}


def test_malformed_oversized_and_wrongly_typed_requests_to_every_verb_are_refused_and_change_no_job(
    fleet: Fleet, topic_prefix: str
) -> None:
    pinned = {"model": "ok", "allowed_hosts": ["elsewhere"]}
    fleet.write_manifest(manifest_text({**pinned, "name": "parked"}, {**pinned, "name": "later", "seed": 1, "priority": 5},
                                       {**pinned, "name": "gone", "seed": 2}))
    fleet.start_coordinator()
    fleet.client().call(Verb.CANCEL, job="gone")
    before = _snapshot(fleet)
    topics = Topics(topic_prefix)
    conn = Connection(BrokerConfig(url=fleet.broker_url), client_id=f"fuzz-{uuid.uuid4().hex[:8]}",
                      reply_prefix=topic_prefix)
    conn.start(wait_s=10)
    # The coordinator answers only inside the sender's own reply namespace, so each (role, client)
    # the fuzzer speaks as gets a connection whose reply topic lies there.
    speakers: dict[tuple[str, str], Connection] = {}
    for role in Role:
        for client in (FUZZ_HOSTS if role is Role.AGENT else [f"fuzz-{role.value}"]):
            speaker = Connection(BrokerConfig(url=fleet.broker_url), client_id=f"fuzz-{uuid.uuid4().hex[:8]}",
                                 reply_topic=f"{topics.reply_namespace(role, client)}/fuzz")
            speaker.start(wait_s=10)
            speakers[(role.value, client)] = speaker
    replies: list[tuple[tuple[str, str, str], dict[str, Any]]] = []

    def send(req: tuple[str, str, str, bytes]) -> tuple[tuple[str, str, str], dict[str, Any]]:
        role, client, verb, payload = req
        topic = f"{topics.prefix}/rpc/{role}/{client}/{verb}"
        try:
            return (role, client, verb), speakers[(role, client)].request_raw(topic, payload, timeout_s=REPLY_WAIT_S)
        except MqfleetError as e:
            return (role, client, verb), {"no reply": str(e), "payload": payload[:200]}

    @settings(max_examples=BATCHES, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(batch=st.lists(requests(), min_size=20, max_size=40), noise=st.lists(host_messages, max_size=6))
    def fuzz(batch: list[tuple[str, str, str, bytes]], noise: list[tuple[str, bytes]]) -> None:
        for kind, payload in noise:
            conn.publish(f"{topics.prefix}/hosts/fuzz-host/{kind}", payload, qos=1)
        with ThreadPoolExecutor(max_workers=16) as pool:
            got = list(pool.map(send, batch))
        replies.extend(got)
        for (role, _, verb), reply in got:
            assert isinstance(reply.get("ok"), bool), (role, verb, reply)
            if not reply["ok"]:
                assert isinstance(reply.get("error"), str) and reply["error"] != "internal", (role, verb, reply)
                assert isinstance(reply.get("message"), str), reply
            else:
                # Only a read-only query, a claim that finds nothing for a host with no eligible job, or an
                # operator verb that moves no job (reload of the same file, drain) succeeds.
                assert role == ROLE_OF_VERB[Verb(verb)].value, (role, verb, reply)
                assert (role == Role.QUERY.value or (verb == Verb.CLAIM.value and reply.get("job") is None)
                        or verb in (Verb.RELOAD.value, Verb.DRAIN.value, Verb.UNDRAIN.value)), (verb, reply)

    try:
        fuzz()
    finally:
        conn.stop(timeout_s=2)
        for speaker in speakers.values():
            speaker.stop(timeout_s=2)
    assert len(replies) >= 20 * BATCHES
    assert {verb for (_, _, verb), _ in replies} >= {v.value for v in Verb}, "every verb was fuzzed"
    assert fleet.coordinator is not None and fleet.coordinator.alive(), fleet.coordinator.log()[-3000:] if fleet.coordinator else ""
    assert fleet.client().health()["ok"] is True
    assert _snapshot(fleet) == before
    assert "Traceback" not in fleet.coordinator.log(), fleet.coordinator.log()[-3000:]
