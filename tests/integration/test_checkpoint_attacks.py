"""Attacks on the checkpoint path by an enrolled host, on the project's mTLS broker and a real SeaweedFS.

The store is reached through a relay that counts the bytes it serves, so each test measures what the
user pays at the user's end: the bytes the coordinator reads for a lying `checkpoint_saved`, the bytes
the next host fetches or writes for a checkpoint it was granted, and how long an honest save waits
while attacks are in flight (issue 25, X2, X3, X7, X8).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mqfleet.errors import StoreError
from mqfleet.local.broker import BrokerPki, LocalBroker
from mqfleet.local.s3 import LocalS3
from mqfleet.store.bundle import pack_artifact
from mqfleet.wire.topics import Role, encode
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import RESUMABLE_TRAINER, manifest_text
from tests.fixtures.hostile import HostileHost
from tests.fixtures.relay import ByteCountingRelay, relayed_env
from tests.fixtures.tls import OPERATOR, T, TlsFleet

MiB = 1024 * 1024

def _start(fleet: TlsFleet, *jobs: dict[str, Any], max_mib: float = 2048, interval_s: float = 60,
           max_attempts: int = 3) -> None:
    """The coordinator on a manifest of resumable `jobs` with these checkpoint settings."""
    settings = (f"[fleet]\nmax_attempts = {max_attempts}\nlease_s = 30\ngrace_s = 2\n"
                f"checkpoint_interval_s = {interval_s}\ncheckpoint_max_mib = {max_mib}\n")
    fleet.write_manifest(manifest_text(*jobs, fleet=settings, trainers=RESUMABLE_TRAINER))
    fleet.start_coordinator()


def _job(name: str, hosts: list[str], steps: int = 1000, **more: Any) -> dict[str, Any]:
    return {"name": name, "model": "resumable", "allowed_hosts": hosts, "hyper": {"steps": steps}, **more}


@pytest.fixture
def watched(tmp_path: Path, tls_broker: tuple[LocalBroker, BrokerPki], seaweed: LocalS3,
            s3_relay: ByteCountingRelay) -> Iterator[tuple[TlsFleet, ByteCountingRelay]]:
    """A TlsFleet whose every store request (coordinator, agents, CLI) goes through the counting relay."""
    bucket = f"t-ckpt-{uuid.uuid4().hex[:12]}"
    fleet = TlsFleet(tmp_path, tls_broker[0], tls_broker[1], seaweed.store_url(bucket), relayed_env(seaweed, s3_relay))
    try:
        yield fleet, s3_relay
    finally:
        fleet.close()


def _lease(grant: dict[str, Any]) -> dict[str, Any]:
    return {"job_id": grant["job"]["id"], "lease_id": grant["lease_id"]}


def _bundle(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, str, int]:
    src = tmp_path / f"ckpt-{uuid.uuid4().hex[:6]}"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    sha, size = pack_artifact(src, src.with_suffix(".tar.zst"))
    return src.with_suffix(".tar.zst"), sha, size


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def _save(host: HostileHost, lease: dict[str, Any], bundle: Path, sha: str, size: int) -> dict[str, Any]:
    url = host.call("checkpoint_url", **lease, sha256=sha, size=size)
    assert url["ok"], url
    host.upload(url, bundle)
    return host.call("checkpoint_saved", **lease, sha256=sha, size=size, timeout_s=60)


def _checkpoint(fleet: TlsFleet, job: str) -> dict[str, Any]:
    checkpoint: dict[str, Any] = fleet.client().job(job).to_wire()["checkpoint"]
    return checkpoint


def test_a_checkpoint_saved_declaring_100_bytes_over_a_64_mib_upload_costs_the_coordinator_no_read(
    watched: tuple[TlsFleet, ByteCountingRelay], tmp_path: Path
) -> None:
    fleet, relay = watched
    _start(fleet, _job("victim", ["host-b"]), _job("honest", ["host-a"], seed=2), interval_s=1)
    attacker, honest = HostileHost(fleet, "host-b"), HostileHost(fleet, "host-a")
    replies: list[dict[str, Any]] = []
    reply_topic = f"{T.reply('agent-host-b')}/lies"
    attacker.conn.subscribe(reply_topic, lambda msg: replies.append(json.loads(msg.payload)))
    try:
        lease = _lease(attacker.claim())
        lies = []
        for _ in range(2):  # two lies filled the coordinator's two verify threads
            sha = hashlib.sha256(os.urandom(100)).hexdigest()
            url = attacker.call("checkpoint_url", **lease, sha256=sha, size=100)
            assert url["ok"], url
            refused_by_store = False
            try:
                attacker.upload(url, _sparse(tmp_path / f"{sha[:8]}.bin", 64 * MiB))
            except StoreError:
                refused_by_store = True
            lies.append((sha, refused_by_store))
        honest_lease = _lease(honest.claim())
        bundle, honest_sha, honest_size = _bundle(tmp_path, {"state.json": b'{"step": 3}'})
        url = honest.call("checkpoint_url", **honest_lease, sha256=honest_sha, size=honest_size)
        honest.upload(url, bundle)

        before = relay.fetched()
        for sha, _ in lies:
            attacker.conn.publish(T.rpc(Role.AGENT, "host-b", "checkpoint_saved"),
                                  encode({"request_id": uuid.uuid4().hex, **lease, "sha256": sha, "size": 100}),
                                  response_topic=reply_topic)
        wait_until(lambda: attacker.conn.unacked_publishes() == 0, timeout_s=10, what="the lies at the broker")
        began = time.monotonic()
        saved = honest.call("checkpoint_saved", **honest_lease, sha256=honest_sha, size=honest_size, timeout_s=60)
        honest_wait_s = time.monotonic() - began
        wait_until(lambda: len(replies) >= 2, timeout_s=60, what="the coordinator's answers to both lies")
        read = relay.fetched() - before
    finally:
        attacker.close()
        honest.close()
    print(f"coordinator read {read} bytes for 2 lies of 100 bytes over 64 MiB uploads "
          f"(store refused the uploads: {[r for _, r in lies]}); an honest save waited {honest_wait_s:.3f} s")
    assert saved["ok"], saved
    assert {r.get("error") for r in replies} <= {"artifact_missing", "artifact_mismatch"}, replies
    assert all(refused for _, refused in lies), "the store took more bytes than the URL declared"
    assert read < 1 * MiB, f"the coordinator read {read / MiB:.1f} MiB for checkpoints declared as 100 bytes"


def test_each_checkpoint_url_earns_one_check_and_a_lease_gets_urls_at_its_sync_pace(
    watched: tuple[TlsFleet, ByteCountingRelay], tmp_path: Path
) -> None:
    fleet, relay = watched
    _start(fleet, _job("victim", ["host-b"]))
    attacker = HostileHost(fleet, "host-b")
    try:
        lease = _lease(attacker.claim())
        bundle, sha, size = _bundle(tmp_path, {"weights.bin": os.urandom(8 * MiB)})
        assert _save(attacker, lease, bundle, sha, size)["ok"]
        before = relay.fetched()
        again = [attacker.call("checkpoint_saved", **lease, sha256=sha, size=size, timeout_s=60) for _ in range(10)]
        read = relay.fetched() - before
        urls = [attacker.call("checkpoint_url", **lease, sha256=sha, size=size) for _ in range(10)]
    finally:
        attacker.close()
    print(f"10 repeated checkpoint_saved of an 8 MiB checkpoint read {read} bytes; "
          f"{sum(bool(u['ok']) for u in urls)} of 10 checkpoint_url granted at once")
    assert read < 1 * MiB, f"repeating a save made the coordinator read {read / MiB:.1f} MiB"
    assert {r.get("error") for r in again} == {"conflict"}, again
    assert sum(bool(u["ok"]) for u in urls) <= 2  # the burst of 3, one spent on the save above
    assert {u.get("error") for u in urls if not u["ok"]} == {"rate_limited"}


def test_a_lease_whose_checkpoints_keep_failing_their_check_gets_nothing_more_read(
    watched: tuple[TlsFleet, ByteCountingRelay], tmp_path: Path
) -> None:
    fleet, _ = watched
    _start(fleet, _job("victim", ["host-b"]), interval_s=0.1)
    attacker = HostileHost(fleet, "host-b")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"j" * 100)
    try:
        lease = _lease(attacker.claim())
        errors = []
        for _ in range(4):  # bytes of the declared size, not of the declared content
            sha = hashlib.sha256(os.urandom(100)).hexdigest()
            # At the lease's pace: past the burst of 3, one URL per 0.1 s interval.
            def granted_url(sha: str = sha) -> dict[str, Any] | None:
                url = attacker.call("checkpoint_url", **lease, sha256=sha, size=100)
                return url if url["ok"] else None

            url = wait_until(granted_url, timeout_s=10, what="a checkpoint URL")
            attacker.upload(url, junk)
            errors.append(attacker.call("checkpoint_saved", **lease, sha256=sha, size=100).get("error"))
    finally:
        attacker.close()
    assert errors == ["artifact_mismatch"] * 3 + ["rate_limited"], errors


def _hand_back(attacker: HostileHost, lease: dict[str, Any]) -> None:
    handed = attacker.call("fail", **lease, cause="shutdown", error="handed back")
    assert handed["ok"], handed


def _next_attempt_start(fleet: TlsFleet, job: str) -> dict[str, Any]:
    start: dict[str, Any] = wait_until(lambda: (s := _checkpoint(fleet, job)["last_start"]) and s["attempt"] == 2 and s,
                                       timeout_s=60, interval_s=0.2, what="the second attempt to report how it started")
    return start


def test_a_checkpoint_bomb_unpacks_no_further_than_checkpoint_max_mib_on_the_next_host(
    watched: tuple[TlsFleet, ByteCountingRelay], tmp_path: Path
) -> None:
    fleet, _ = watched
    _start(fleet, _job("victim", ["host-a", "host-b"], steps=30), max_mib=4)
    # 128 MiB that zstd packs about 150 to 1: under the 200x ratio and the 32 GiB a plain unpack allows.
    bomb = b"".join(os.urandom(24) + bytes(4096 - 24) for _ in range(32 * 1024))
    bundle, sha, size = _bundle(tmp_path, {"state.bin": bomb})
    del bomb
    assert size < 4 * MiB, size
    attacker = HostileHost(fleet, "host-b")
    try:
        lease = _lease(attacker.claim())
        assert _save(attacker, lease, bundle, sha, size)["ok"]
        _hand_back(attacker, lease)
    finally:
        attacker.close()
    agent = fleet.start_agent("host-a")
    start = _next_attempt_start(fleet, "victim")
    written = psutil.Process(agent.pid).io_counters().write_chars
    print(f"a {size / MiB:.2f} MiB checkpoint bomb of 128 MiB: the next host wrote {written / MiB:.1f} MiB; "
          f"{start['note']}")
    assert start["resumed"] is False and "unpacks to more than" in start["note"], start
    assert written < 16 * MiB, f"the next host wrote {written / MiB:.1f} MiB for a 4 MiB checkpoint limit"
    fleet.wait_for_status({"victim": "completed"}, timeout_s=60)
    shown = fleet.cli_as(OPERATOR, "show", "victim")
    assert "started fresh" in shown.stdout, shown.stdout


def test_the_next_host_fetches_no_byte_past_the_granted_checkpoint_size(
    watched: tuple[TlsFleet, ByteCountingRelay], tmp_path: Path
) -> None:
    fleet, relay = watched
    _start(fleet, _job("victim", ["host-a", "host-b"], steps=30))
    attacker = HostileHost(fleet, "host-b")
    try:
        lease = _lease(attacker.claim())
        bundle, sha, size = _bundle(tmp_path, {"s": b"1"})
        assert _save(attacker, lease, bundle, sha, size)["ok"]
        _hand_back(attacker, lease)
    finally:
        attacker.close()
    # The recorded checkpoint's bytes are replaced by 64 MiB (as anyone with the store's keys, or a file
    # store's writer, could): the grant still says `size` bytes.
    store = fleet.store()
    job_id = fleet.client().job("victim").id
    store.put_file(store.checkpoint_key_for(job_id, sha), _sparse(tmp_path / "swap.bin", 64 * MiB))
    before = relay.fetched()
    fleet.start_agent("host-a")
    start = _next_attempt_start(fleet, "victim")
    fetched = relay.fetched() - before
    print(f"a {size}-byte checkpoint swapped for 64 MiB: the next host fetched {fetched} bytes; {start['note']}")
    assert start["resumed"] is False and str(size) in start["note"], start
    assert fetched < 64 * 1024, f"the next host fetched {fetched / MiB:.1f} MiB for a {size}-byte checkpoint"
    fleet.wait_for_status({"victim": "completed"}, timeout_s=60)


def test_fetch_reads_no_byte_past_the_artifacts_recorded_size(
    watched: tuple[TlsFleet, ByteCountingRelay], tmp_path: Path
) -> None:
    fleet, relay = watched
    _start(fleet, _job("done", ["host-a"], steps=1))
    fleet.start_agent("host-a")
    fleet.wait_for_status({"done": "completed"}, timeout_s=60)
    store = fleet.store()
    sha = fleet.client().job("done").artifact
    assert sha is not None
    store.put_file(store.key_for(sha), _sparse(tmp_path / "swap.bin", 64 * MiB))
    before = relay.fetched()
    refused = fleet.cli_as(OPERATOR, "fetch", "done", "-o", str(tmp_path / "out"), timeout="10")
    fetched = relay.fetched() - before
    print(f"fetch of an artifact swapped for 64 MiB read {fetched} bytes: {refused.stderr.strip()}")
    assert refused.returncode == 1 and "recorded size" in refused.stderr, refused.stderr
    assert fetched < 64 * 1024, f"fetch read {fetched / MiB:.1f} MiB"
    assert not (tmp_path / "out").exists()


def test_attempt_one_cannot_write_the_checkpoint_after_attempts_two_and_three_ran_and_the_job_failed(
    watched: tuple[TlsFleet, ByteCountingRelay], tmp_path: Path
) -> None:
    fleet, _ = watched
    _start(fleet, _job("victim", ["host-b"]), max_attempts=1)
    attacker = HostileHost(fleet, "host-b")
    try:
        first = _lease(attacker.claim())
        _hand_back(attacker, first)  # attempt 1 ends; not counted
        _hand_back(attacker, _lease(attacker.claim()))  # attempt 2, likewise
        third = _lease(attacker.claim())
        assert attacker.call("fail", **third, cause="app", error="crashed")["ok"]  # attempt 3: the job fails
        wait_until(lambda: fleet.client().job("victim").status == "failed", timeout_s=10, what="the job failed")
        bundle, sha, size = _bundle(tmp_path, {"state.json": b'{"step": 999}'})
        url = attacker.call("checkpoint_url", **first, sha256=sha, size=size)
        saved = None
        if url["ok"]:
            attacker.upload(url, bundle)
            saved = attacker.call("checkpoint_saved", **first, sha256=sha, size=size)
    finally:
        attacker.close()
    assert url["ok"] is False and url["error"] == "lease_lost", (url, saved)
    assert _checkpoint(fleet, "victim")["latest"] is None
