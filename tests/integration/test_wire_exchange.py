"""The wire, byte for byte (issue 26, "What must not change"): a representative exchange between two
agents, an operator's client and a coordinator (every verb's request and reply, a refusal, the events,
the retained job states and coordinator status, adverts, host statuses, a log batch, a control message
and the nudges) is recorded off a real broker and compared with tests/data/wire/exchange.jsonl, recorded
from the code before the wire types were reworked.

Time comes from an injected clock, the agents' messages carry fixed values, and the operator's client
has a fixed client id, so nearly every byte is fixed by construction. Only what is random or local by
design is replaced by a placeholder before the comparison: the lease ids the coordinator draws, the
request ids and operator signatures the clients draw, the test's topic prefix and temporary folder,
the host name and the package version. Requests are sent one after another,
so each is recorded with its reply in the order sent; the other messages race each other across
topics, so they are compared as a sorted list.

Record again only on purpose (a field added, never one renamed or removed): MQFLEET_RECORD_WIRE=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mqfleet import __version__
from mqfleet.client import FleetClient
from mqfleet.coordinator.core import CoordinatorConfig
from mqfleet.coordinator.service import Coordinator
from mqfleet.errors import RemoteError
from mqfleet.lifecycle import Cause
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.inbox import Message
from mqfleet.mqtt.rpc import RpcClient
from mqfleet.store.transfer import upload_to_url
from mqfleet.wire import verbs
from mqfleet.wire.advert import Advert, Gpu
from mqfleet.wire.published import HostStatus, LogBatch
from mqfleet.wire.reports import Usage
from mqfleet.wire.requests import (
    CheckpointSavedRequest,
    CheckpointStartRequest,
    CheckpointUploadRequest,
    CompleteRequest,
    FailRequest,
    Grant,
    NoFields,
    Presence,
    RenewRequest,
    UploadUrlRequest,
)
from mqfleet.wire.topics import JsonObject, Topics, encode
from mqfleet.wire.verbs import Rep, Req, VerbSpec
from tests.fixtures.common import Clock, wait_until
from tests.fixtures.fleet import OPERATOR_TOKEN, ROOT, manifest_text

RECORDED = ROOT / "tests" / "data" / "wire" / "exchange.jsonl"
T0 = 1_800_000_000.0
JOBS = [{"name": f"j{i}", "model": "ok", "mode": "m", "seed": i, "hyper": {"tag": f"t{i}"}} for i in range(1, 6)]
FLEET = "[fleet]\nmax_attempts = 3\nlease_s = 60\ngrace_s = 10\nquarantine_after = 2\n"


class Recorder:
    """Every message under the prefix, as the broker delivered it (the retain flag as published)."""

    def __init__(self, conn: Connection, prefix: str) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self.conn, self.probe = conn, f"{prefix}/recorder-probe"
        conn.subscribe(f"{prefix}/#", self._on_message, retain_as_published=True)

    def subscribed(self) -> bool:
        """True once the recorder's own probe came back: from then on it misses nothing."""
        self.conn.publish(self.probe, b"", qos=0)
        return self.seen(self.probe, "")

    def _on_message(self, msg: Message) -> None:
        with self._lock:
            self.messages.append(msg)

    def seen(self, topic: str, text: str) -> bool:
        with self._lock:
            return any(m.topic == topic and text.encode() in m.payload for m in self.messages)

    def taken(self) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.topic != self.probe]


def advert(host: str) -> Advert:
    """A host's advert with every field set."""
    return Advert(host=host, hostname=host, os="linux", os_version="6.1.0", arch="x86_64", os_family="debian",
                  python="3.11.2", cpu_cores=8, ram_gib=31.5, cuda=True,
                  gpus=(Gpu(index=0, name="NVIDIA H100", uuid="GPU-0000", vram_gib=79.5, vram_free_gib=79.0),),
                  driver="550.54", torch="2.13.0", xgboost="2.1.0", git_commit="0123456789ab", git_dirty=False,
                  agent_version="1.0.0", slots=2, labels=("fast", "big"), ts=T0)


class Agent:
    """An agent's side of the wire, sent as mqfleet/agent/daemon.py and job.py send it."""

    def __init__(self, connect: Callable[..., Connection], topics: Topics, host: str) -> None:
        self.host, self.topics = host, topics
        offline = encode(HostStatus(state=Presence.OFFLINE).to_wire())
        self.conn = connect(topics.client_id(f"agent-{host}"), reply_prefix=topics.prefix,
                            will=(topics.status(host), offline, True))
        self.rpc = RpcClient(self.conn, topics, host, timeout_s=10.0)
        self.conn.publish(topics.advert(host), advert(host).to_wire(), qos=1, retain=True)
        status = HostStatus(state=Presence.ONLINE, ts=T0, jobs=[], slots=2)
        self.conn.publish(topics.status(host), encode(status.to_wire()), qos=1, retain=True)

    def call(self, verb: VerbSpec[Req, Rep], message: Req) -> Rep:
        return self.rpc.call(verb, message)

    def claim(self) -> Grant | None:
        return self.call(verbs.CLAIM, NoFields()).job

    def log(self, job_id: str, lines: list[str], attempt: int) -> None:
        batch = LogBatch(job_id=job_id, lines=lines, ts=T0, attempt=attempt)
        self.conn.publish(self.topics.log(self.host, job_id), batch.to_wire(), qos=0)


def bundle(tmp_path: Path, name: str, content: bytes) -> tuple[Path, str, int]:
    path = tmp_path / name
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest(), len(content)


def usage(wall_s: float) -> Usage:
    return Usage(wall_s=wall_s, cpu_s=wall_s / 2, max_rss_bytes=123_456_789, gpu_mem_max_bytes=None)


def run_exchange(coord: Coordinator, connect: Callable[..., Connection], client: FleetClient, recorder: Recorder,
                 tmp_path: Path) -> None:
    topics = coord.topics
    h1 = Agent(connect, topics, "h1")
    wait_until(lambda: coord.is_known_host("h1"), timeout_s=10, what="h1's advert recorded")
    # h1 runs j1 to completion: checkpoint start, a renewal with progress, a log batch, a checkpoint, the artifact
    g1 = h1.claim()
    assert g1 is not None
    lease: dict[str, Any] = {"job_id": g1.job.id, "lease_id": g1.lease_id}
    h1.call(verbs.CHECKPOINT_START, CheckpointStartRequest(**lease, resumed=False, note="no checkpoint to resume"))
    progress: JsonObject = {"epoch": 1, "loss": 0.5, "metrics": {"acc": 0.75}}
    h1.call(verbs.RENEW, RenewRequest(**lease, progress=progress, progress_reports=[(1, T0, progress)]))
    h1.log(g1.job.id, ["epoch 1 loss 0.5", "epoch 2 loss 0.25"], attempt=g1.attempt)
    path, sha, size = bundle(tmp_path, "checkpoint.tar.zst", b"checkpoint of j1")
    url = h1.call(verbs.CHECKPOINT_URL, CheckpointUploadRequest(**lease, sha256=sha, size=size))
    upload_to_url(url.url, path)
    h1.call(verbs.CHECKPOINT_SAVED, CheckpointSavedRequest(**lease, sha256=sha, size=size, progress=progress))
    path, sha, size = bundle(tmp_path, "artifact.tar.zst", b"artifact of j1")
    upload = h1.call(verbs.UPLOAD_URL, UploadUrlRequest(**lease, sha256=sha, size=size))
    assert upload.url is not None
    upload_to_url(upload.url, path)
    done: JsonObject = {"epoch": 2, "loss": 0.25, "metrics": {"acc": 0.875}}
    h1.call(verbs.COMPLETE, CompleteRequest(**lease, sha256=sha, size=size, metrics={"acc": 0.875}, output_tail="done\n",
                                           usage=usage(12.5), progress_reports=[(2, T0, done)]))
    # h1 starts j2, the operator cancels it (a control message), and h1's next renewal is refused
    g2 = h1.claim()
    assert g2 is not None
    lease = {"job_id": g2.job.id, "lease_id": g2.lease_id}
    h1.call(verbs.RENEW, RenewRequest(**lease))
    client.cancel("j2")
    with pytest.raises(RemoteError, match="lease_lost"):
        h1.call(verbs.RENEW, RenewRequest(**lease))
    # h2 fails two jobs in a row and is quarantined (a host event); a quarantined host gets no work
    h2 = Agent(connect, topics, "h2")
    wait_until(lambda: coord.is_known_host("h2"), timeout_s=10, what="h2's advert recorded")
    for attempt in range(2):
        grant = h2.claim()
        assert grant is not None
        h2.call(verbs.FAIL, FailRequest(grant.job.id, grant.lease_id, Cause.APP, exit_code=1, output_tail="Traceback\n",
                                       error="trainer exited with 1", usage=usage(3.0 + attempt),
                                       progress_reports=[]))
    assert h2.claim() is None
    # the operator's verbs and queries, and one refusal
    list(client.jobs())
    client.job("j1")
    client.workers()
    client.health()
    client.artifacts()
    client.logs("j1")
    client.download_url("j1")
    client.compare(["j1", "j3"])
    client.manifest()
    with pytest.raises(RemoteError, match="not_found"):
        client.job("no-such-job")
    client.requeue("j2", fresh=True)
    client.drain("h1")
    client.undrain("h2")
    client.gc(dry_run=True)
    sent = manifest_text(*JOBS, {"name": "j6", "model": "ok", "mode": "m", "seed": 6}, fleet=FLEET)
    client.reload(sent, source="sent.toml")
    # the reload's publishes are the last: once its nudge is seen, everything before it was delivered
    wait_until(lambda: recorder.seen(topics.work, '"reason":"reload"'), timeout_s=10, what="the reload's nudge")


def placeholders(messages: list[Message], fixed: dict[str, str]) -> list[tuple[str, str]]:
    """(value, placeholder) for each value random or local by design, in order of first appearance."""
    found: dict[str, str] = dict(fixed)
    counters: dict[str, int] = {}

    def add(value: object, kind: str) -> None:
        if isinstance(value, (str, float, int)) and not isinstance(value, bool) and str(value) not in found:
            counters[kind] = counters.get(kind, 0) + 1
            found[str(value)] = f"<{kind}-{counters[kind]}>"

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("lease_id", "request_id"):
                    add(item, key.replace("_", "-"))
                elif key == "auth" and isinstance(item, dict):
                    add(item.get("mac"), "mac")  # keyed by the request id; its `ts` is the injected clock's
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for msg in messages:
        walk(json.loads(msg.payload) if msg.payload else None)
    # longest first, so a folder is replaced before a folder inside it
    return sorted(found.items(), key=lambda item: -len(item[0]))


def normalise(text: str, subs: list[tuple[str, str]]) -> str:
    for value, placeholder in subs:
        text = text.replace(value, placeholder)
    return text


def records(messages: list[Message], prefix: str, tmp_path: Path) -> list[str]:
    """The exchange as JSON lines: each request with its reply (paired by correlation data) in the order
    sent, then every other message, sorted (messages on different topics race each other)."""
    topics = Topics(prefix)
    is_reply = re.compile(re.escape(topics.reply("")) + "[^/]+$").match
    replies = {m.correlation_data: m for m in messages if is_reply(m.topic)}
    exchange = [m for m in messages if topics.parse_rpc(m.topic) is not None]
    published = [m for m in messages if topics.parse_rpc(m.topic) is None and not is_reply(m.topic)]
    fixed = {prefix: "<prefix>", prefix.replace("/", "_"): "<prefix>", str(tmp_path): "<tmp>",
             json.dumps(__version__): '"<version>"',
             json.dumps(socket.gethostname()): '"<hostname>"'}
    subs = placeholders(exchange, fixed)
    lines = []
    for request in exchange:
        reply = replies[request.correlation_data]
        lines.append({"request": request.topic, "payload": request.payload.decode(), "reply_topic": reply.topic,
                      "reply": reply.payload.decode()})
    others = [{"topic": m.topic, "retain": m.retain, "payload": m.payload.decode()} for m in published]
    texts = [json.dumps({k: normalise(v, subs) if isinstance(v, str) else v for k, v in line.items()})
             for line in lines + others]
    return texts[:len(lines)] + sorted(texts[len(lines):])


@pytest.fixture
def coordinator(tmp_path: Path, broker_url: str, topic_prefix: str, clock: Clock) -> Iterator[Coordinator]:
    clock.now = T0
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(manifest_text(*JOBS, fleet=FLEET))
    config = CoordinatorConfig(
        manifest_path=manifest, db_path=tmp_path / "state.db", broker=BrokerConfig(url=broker_url),
        store_url=(tmp_path / "store").as_uri(), prefix=topic_prefix, operator_token=OPERATOR_TOKEN,
        sweep_interval_s=3600.0,
    )
    yield Coordinator(config, clock=clock)


def test_the_wire_is_byte_for_byte_the_recorded_exchange(
    coordinator: Coordinator, mqtt_connect: Callable[..., Connection], broker_url: str, topic_prefix: str,
    tmp_path: Path, clock: Clock,
) -> None:
    coordinator.start(wait_s=10)
    client = FleetClient(BrokerConfig(url=broker_url), prefix=topic_prefix, token=OPERATOR_TOKEN,
                         client_id="cli-recorder", timeout_s=10.0)
    client.rpc.clock = clock  # operator requests are signed at the coordinator's time
    try:
        # Recorded from a settled start: the start-up status says whether the background republisher was
        # still running at that instant, so the status is published again once it has finished.
        assert coordinator.republisher.wait_idle(10), "the republisher's start-up sweep ended"
        coordinator.tick(clock.advance(10.0))
        recorder = Recorder(mqtt_connect(), topic_prefix)
        wait_until(recorder.subscribed, timeout_s=10, what="the recorder's subscription")
        run_exchange(coordinator, mqtt_connect, client, recorder, tmp_path)
        rebuilt = records(recorder.taken(), topic_prefix, tmp_path)
    finally:
        client.close()
        coordinator.stop()
    if os.environ.get("MQFLEET_RECORD_WIRE"):
        RECORDED.parent.mkdir(parents=True, exist_ok=True)
        RECORDED.write_text("".join(f"{line}\n" for line in rebuilt), encoding="utf-8")
    recorded = RECORDED.read_text(encoding="utf-8").splitlines()
    if rebuilt != recorded:
        (tmp_path / "exchange.jsonl").write_text("".join(f"{line}\n" for line in rebuilt), encoding="utf-8")
    for n, (old, new) in enumerate(zip(recorded, rebuilt, strict=False), start=1):
        assert new == old, f"line {n} of {RECORDED.name} differs (now: {tmp_path}/exchange.jsonl):\n{old}\n{new}"
    assert len(rebuilt) == len(recorded), f"{len(recorded)} messages recorded, {len(rebuilt)} now"

