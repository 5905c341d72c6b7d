"""Attacks on the artifact store by a host that holds a lease, against the project's mTLS broker and a real S3.

Each test is what a hostile but enrolled host tried (finding 2 of the security review; issue 25, X2): ask
for a write URL to another job's verified artifact, reuse a presigned upload after verification, complete
with a trusted digest whose stored bytes were swapped or with a lie about its size, upload more than it
declared, fail the check again and again. Each asserts the artifact is byte-for-byte what was verified
and `fetch` still returns it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from mqfleet.errors import StoreError
from mqfleet.store.base import ArtifactStore
from mqfleet.store.bundle import pack_artifact
from tests.fixtures.fleet import manifest_text
from tests.fixtures.hostile import HostileHost
from tests.fixtures.tls import OPERATOR, TlsFleet

JOBS = manifest_text(
    {"name": "victim", "model": "ok", "allowed_hosts": ["host-a"], "hyper": {"size_kib": 64}},
    {"name": "mine", "model": "ok", "allowed_hosts": ["host-b"], "seed": 2},
)


@pytest.fixture
def victim(tls_s3_fleet: TlsFleet) -> Iterator[tuple[TlsFleet, dict[str, Any]]]:
    """host-a's real agent has completed `victim`; its verified artifact is in S3."""
    tls_s3_fleet.write_manifest(JOBS)
    tls_s3_fleet.start_coordinator()
    tls_s3_fleet.start_agent("host-a")
    tls_s3_fleet.wait_for_status({"victim": "completed"}, timeout_s=60)
    tls_s3_fleet.agents.pop("host-a").stop()
    job = tls_s3_fleet.client().job("victim").to_wire()
    yield tls_s3_fleet, job


def _lease(grant: dict[str, Any]) -> dict[str, Any]:
    return {"job_id": grant["job"]["id"], "lease_id": grant["lease_id"]}


def _intact(store: ArtifactStore, sha256: str, size: int) -> bool:
    return store.hash_object(store.key_for(sha256)) == (sha256, size)


def _fetch_ok(fleet: TlsFleet, job: str, out: Path) -> None:
    result = fleet.cli_as(OPERATOR, "fetch", job, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert any(out.rglob("result.json"))


def _bundle(tmp_path: Path, content: bytes) -> tuple[Path, str, int]:
    src = tmp_path / f"out-{uuid.uuid4().hex[:6]}"
    src.mkdir()
    (src / "model.bin").write_bytes(content)
    sha, size = pack_artifact(src, tmp_path / f"{src.name}.tar.zst")
    return tmp_path / f"{src.name}.tar.zst", sha, size


def test_an_upload_url_for_another_jobs_verified_digest_with_a_wrong_size_cannot_touch_it(
    victim: tuple[TlsFleet, dict[str, Any]], tmp_path: Path
) -> None:
    fleet, job = victim
    store = fleet.store()
    sha, size = job["artifact"], store.stat(store.key_for(job["artifact"]))
    assert size is not None
    attacker = HostileHost(fleet)
    try:
        lease = _lease(attacker.claim())
        upload = attacker.call("upload_url", **lease, sha256=sha, size=size + 1)
        assert upload["ok"] and upload["exists"] is False
        assert "/artifacts/" not in urlsplit(upload["url"]).path, "a write URL for the artifact key itself"
        assert upload["expires_s"] <= 6 + 180, "a presigned PUT outlives its lease by minutes at most"
        evil = tmp_path / "evil.tar.zst"
        evil.write_bytes(b"\0" * (size + 1))
        attacker.upload(upload, evil)
        refused = attacker.call("complete", **lease, sha256=sha, size=size + 1, metrics={})
        assert refused["ok"] is False and refused["error"] == "artifact_mismatch", refused
    finally:
        attacker.close()
    assert _intact(store, sha, size)
    assert fleet.client().job("mine").status != "completed"
    _fetch_ok(fleet, "victim", tmp_path / "fetched")


def test_a_presigned_put_reused_after_verification_leaves_the_verified_artifact_as_it_was(
    victim: tuple[TlsFleet, dict[str, Any]], tmp_path: Path
) -> None:
    fleet, _ = victim
    store = fleet.store()
    attacker = HostileHost(fleet)
    try:
        lease = _lease(attacker.claim())
        bundle, sha, size = _bundle(tmp_path, b"honest model " * 1000)
        upload = attacker.call("upload_url", **lease, sha256=sha, size=size)
        attacker.upload(upload, bundle)
        done = attacker.call("complete", **lease, sha256=sha, size=size, metrics={})
        assert done["ok"] and done["status"] == "completed", done
        # The same URL again, now with other bytes: it writes only the spent staging key.
        swapped, _, _ = _bundle(tmp_path, b"swapped model " * 1000)
        try:
            attacker.upload(upload, swapped)
        except Exception:  # refused outright is just as good
            pass
    finally:
        attacker.close()
    assert _intact(store, sha, size)
    assert fleet.client().job("mine").artifact == sha


def test_a_completion_naming_a_stored_digest_is_refused_when_the_stored_bytes_were_swapped(
    victim: tuple[TlsFleet, dict[str, Any]], tmp_path: Path
) -> None:
    fleet, job = victim
    store = fleet.store()
    sha = job["artifact"]
    key = store.key_for(sha)
    size = store.stat(key)
    assert size is not None
    # Someone with store access swaps the bytes but keeps the size: a size check alone would trust it.
    forged = tmp_path / "forged.bin"
    forged.write_bytes(b"\1" * size)
    store.put_file(key, forged)
    attacker = HostileHost(fleet)
    try:
        lease = _lease(attacker.claim())
        assert attacker.call("upload_url", **lease, sha256=sha, size=size)["exists"] is True
        refused = attacker.call("complete", **lease, sha256=sha, size=size, metrics={})
        assert refused["ok"] is False and refused["error"] == "artifact_mismatch", refused
        # The bad object is gone, so the next upload_url hands out a (staging) URL again.
        assert store.stat(key) is None
        again = attacker.call("upload_url", **lease, sha256=sha, size=size)
        assert again["exists"] is False and "/artifacts/" not in urlsplit(again["url"]).path
    finally:
        attacker.close()
    assert fleet.client().job("mine").status != "completed"
    assert hashlib.sha256(b"\1" * size).hexdigest() != sha


def test_a_completion_naming_another_jobs_artifact_with_a_wrong_size_reads_nothing_and_deletes_nothing(
    victim: tuple[TlsFleet, dict[str, Any]], tmp_path: Path
) -> None:
    fleet, job = victim
    store = fleet.store()
    sha = job["artifact"]
    size = store.stat(store.key_for(sha))
    assert size is not None
    attacker = HostileHost(fleet)
    try:
        lease = _lease(attacker.claim())
        # No upload: the lie names the verified object itself, one byte longer than it is.
        refused = attacker.call("complete", **lease, sha256=sha, size=size + 1, metrics={})
    finally:
        attacker.close()
    assert refused["ok"] is False and refused["error"] == "artifact_mismatch", refused
    assert _intact(store, sha, size), "a lie about the size deleted another job's verified artifact"
    _fetch_ok(fleet, "victim", tmp_path / "fetched")


def test_a_staging_upload_past_its_declared_size_is_refused_by_the_store_and_failed_checks_are_capped(
    victim: tuple[TlsFleet, dict[str, Any]], tmp_path: Path
) -> None:
    fleet, _ = victim
    store = fleet.store()
    attacker = HostileHost(fleet)
    try:
        lease = _lease(attacker.claim())
        sha = hashlib.sha256(b"declared").hexdigest()
        upload = attacker.call("upload_url", **lease, sha256=sha, size=100)
        big = tmp_path / "big.bin"
        with open(big, "wb") as fh:
            fh.truncate(16 * 1024 * 1024)
        with pytest.raises(StoreError):
            attacker.upload(upload, big)
        assert store.stat(upload["upload_key"]) is None, "the store kept more bytes than the URL declared"
        # Bytes of the declared size but not the declared content: each completion reads 100 bytes, three times.
        junk = tmp_path / "junk.bin"
        junk.write_bytes(b"j" * 100)
        errors = []
        for _ in range(4):
            attacker.upload(upload, junk)
            errors.append(attacker.call("complete", **lease, sha256=sha, size=100, metrics={}).get("error"))
    finally:
        attacker.close()
    assert errors == ["artifact_mismatch"] * 3 + ["rate_limited"], errors
    assert fleet.client().job("mine").status != "completed"
