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
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mqfleet.errors import MqfleetError
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.wire.signing import sign_request
from mqfleet.wire.topics import Role, Topics, Verb
from mqfleet.wire.verbs import VERBS
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


def _signed(body: dict[str, Any], verb: str, token: str) -> dict[str, Any]:
    try:
        return {**body, "auth": sign_request(token, verb, body, time.time())}
    except ValueError:  # NaN somewhere: no client of ours could sign it either
        return body


@st.composite
def bodies(draw: st.DrawFn, role: Role, verb: str) -> bytes:
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
    body.pop("auth", None)
    if role is Role.OPERATOR and draw(st.booleans()):
        # Signed with the right token, every job reference wrongly typed: every check past the signature gets
        # exercised, yet no random string can name (a prefix of) a real job and legitimately cancel it.
        body["job"] = draw(wrong_refs)
        body.pop("manifest", None) if draw(st.booleans()) else body.update(manifest=draw(wrong_refs))
        body = json.loads(json.dumps(body, default=str))
        body = _signed(body, verb, OPERATOR_TOKEN)
    elif draw(st.booleans()):
        # A signature by the wrong token, or an auth field of any shape at all.
        body = _signed(json.loads(json.dumps(body, default=str)), verb, "not-the-token") if draw(st.booleans()) \
            else {**body, "auth": draw(json_values)}
    return json.dumps(body, default=str).encode()


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str, bytes]:
    """(role, client, verb, payload): mostly a verb on its own role, sometimes a wrong role or an unknown verb."""
    verb = draw(st.sampled_from([v.value for v in Verb]) | st.sampled_from(["nope", "CLAIM", "claim.x", "__init__"]))
    right = VERBS[Verb(verb)].role if verb in Verb._value2member_map_ else None
    role = right if right is not None and draw(st.integers(0, 4)) else draw(st.sampled_from(list(Role)))
    client = draw(st.sampled_from(FUZZ_HOSTS)) if role is Role.AGENT else f"fuzz-{role.value}"
    return role.value, client, verb, draw(bodies(role, verb))


host_messages = st.tuples(st.sampled_from(["advert", "status"]),
                          st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v, default=str).encode()))


def _snapshot(fleet: Fleet) -> dict[str, tuple[Any, ...]]:
    return {str(j["id"]): (j["status"], j["host"], j["attempts"], j["artifact"]) for j in fleet.client().jobs()}


def test_malformed_oversized_and_wrongly_typed_requests_to_every_verb_are_refused_and_change_no_job(
    fleet: Fleet, topic_prefix: str
) -> None:
    pinned = {"model": "ok", "allowed_hosts": ["elsewhere"]}
    fleet.write_manifest(manifest_text({**pinned, "name": "parked"}, {**pinned, "name": "later", "seed": 1, "priority": 5},
                                       {**pinned, "name": "gone", "seed": 2}))
    fleet.start_coordinator()
    fleet.client().call_json(Verb.CANCEL, job="gone")
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
                # Only a read-only query, a claim that finds nothing for a host with no eligible job, or a
                # signed operator verb that moves no job (reload of the same file, drain, gc) succeeds.
                assert role == VERBS[Verb(verb)].role.value, (role, verb, reply)
                assert (role == Role.QUERY.value or (verb == Verb.CLAIM.value and reply.get("job") is None)
                        or verb in (Verb.RELOAD.value, Verb.DRAIN.value, Verb.UNDRAIN.value, Verb.GC.value)), (verb, reply)

    try:
        fuzz()
    finally:
        conn.stop(timeout_s=2)
        for speaker in speakers.values():
            speaker.stop(timeout_s=2)
    assert len(replies) >= 20 * BATCHES
    assert {verb for (_, _, verb), _ in replies} >= {v.value for v in Verb}, "every verb was fuzzed"
    assert fleet.coordinator is not None and fleet.coordinator.alive(), fleet.coordinator.log()[-3000:] if fleet.coordinator else ""
    assert fleet.client().health().state == "online"
    assert _snapshot(fleet) == before
    assert "Traceback" not in fleet.coordinator.log(), fleet.coordinator.log()[-3000:]


#: Response Topics an attacker would choose: other hosts' and roles' topics, wildcards, NUL, long, unicode.
def _response_topics(prefix: str, me: str) -> st.SearchStrategy[str]:
    targets = [f"{prefix}/rpc/agent/real-host/claim", f"{prefix}/hosts/real-host/advert", f"{prefix}/control/real-host",
               f"{prefix}/reply/agent-real-host", f"{prefix}/jobs/x/state", f"{prefix}/coordinator/status",
               f"{prefix}/reply/{me}/+", f"{prefix}/reply/{me}/#", f"{prefix}/reply/{me}x", f"{prefix}/#", "#", "+",
               f"{prefix}/reply/{me}/../other", f"{prefix}/reply/{me}\0evil", "", "elsewhere/topic", "/" * 300]
    return st.sampled_from(targets) | st.text(min_size=1, max_size=80).map(lambda t: f"{prefix}/{t}")


def test_response_topics_and_mqtt_properties_of_any_shape_never_make_the_coordinator_publish_outside_the_senders_namespace(
    fleet: Fleet, topic_prefix: str
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    fleet.write_manifest(manifest_text({"model": "ok", "allowed_hosts": ["elsewhere"], "name": "parked"}))
    fleet.start_coordinator()
    before = _snapshot(fleet)
    me = f"fuzz-{uuid.uuid4().hex[:8]}"
    seen: list[str] = []
    watcher = Connection(BrokerConfig(url=fleet.broker_url), client_id=f"watch-{uuid.uuid4().hex[:8]}",
                         reply_prefix=topic_prefix)
    watcher.subscribe(f"{topic_prefix}/#", lambda m: seen.append(m.topic), qos=0)
    watcher.start(wait_s=10)
    host, port = fleet.broker_url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=me, protocol=mqtt.MQTTv5)
    client.connect(host, int(port))
    client.loop_start()
    sent = 0

    @settings(max_examples=60, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=[HealthCheck.too_slow])
    @given(batch=st.lists(st.tuples(
        st.sampled_from([v.value for v in Verb if VERBS[v].role is Role.QUERY] + ["claim", "cancel"]),
        _response_topics(topic_prefix, me), st.binary(max_size=40), st.booleans(),
        st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=3),
        st.none() | st.integers(0, 3600), st.none() | st.integers(0, 1), st.none() | st.text(max_size=20)),
        min_size=5, max_size=15))
    def fuzz(batch: list[tuple[str, str, bytes, bool, list[tuple[str, str]], int | None, int | None, str | None]]) -> None:
        nonlocal sent
        for verb, response_topic, correlation, retain, user_props, expiry, fmt, content_type in batch:
            role = VERBS[Verb(verb)].role
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = response_topic
            props.CorrelationData = correlation
            for key, value in user_props:
                props.UserProperty = (key, value)
            if expiry is not None:
                props.MessageExpiryInterval = expiry
            if fmt is not None:
                props.PayloadFormatIndicator = fmt
            if content_type is not None:
                props.ContentType = content_type
            if not client.is_connected():  # the broker may cut a client that broke the protocol; come back
                client.reconnect()
            topic = f"{topic_prefix}/rpc/{role.value}/{me}/{verb}"
            client.publish(topic, json.dumps({"request_id": uuid.uuid4().hex, "job": "parked"}), qos=1,
                           retain=retain, properties=props)
            sent += 1
            if retain:  # never leave a retained request behind for the next example or test
                client.publish(topic, b"", qos=1, retain=True)

    try:
        fuzz()
        assert fleet.client().health().state == "online"
    finally:
        client.loop_stop()
        client.disconnect()
        watcher.stop(timeout_s=2)
    allowed = (f"{topic_prefix}/rpc/", f"{topic_prefix}/reply/{me}/", f"{topic_prefix}/coordinator/status",
               f"{topic_prefix}/events", f"{topic_prefix}/work", f"{topic_prefix}/jobs/")
    # The test's own FleetClients (snapshot, health) get replies on their reply topics too.
    ours = tuple(f"{topic_prefix}/reply/{c.client_id}" for c in fleet._clients)
    outside = sorted({t for t in seen if not (t.startswith(allowed + ours) or t == f"{topic_prefix}/reply/{me}")})
    assert outside == [], outside[:20]
    assert sent >= 300
    assert fleet.coordinator is not None and fleet.coordinator.alive()
    assert _snapshot(fleet) == before
    assert "Traceback" not in fleet.coordinator.log(), fleet.coordinator.log()[-3000:]
