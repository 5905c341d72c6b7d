"""The agent's checkpoint folder: snapshots, syncs only on change and under the size limit, retries, restores.

The store is a real FileStore (file:// URLs, as a one-machine fleet uses); the coordinator's replies
come from a small in-process stand-in that records what the agent asked.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mqfleet.agent.checkpoint import RESTORE_DISK_RESERVE_BYTES, CheckpointPlan, CheckpointSync, fingerprint, snapshot
from mqfleet.errors import BundleError, RequestTimeoutError
from mqfleet.store.bundle import pack_artifact
from mqfleet.store.files import FileStore
from mqfleet.wire import verbs
from mqfleet.wire.requests import Grant, GrantedCheckpoint
from mqfleet.wire.verbs import Rep, Req, VerbSpec

JOB = "ab" * 32
LEASE = "cd" * 16


class Coordinator:
    """Answers the checkpoint verbs like the real one, against a FileStore; can be told to stay away."""

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.away = False

    def __call__(self, verb: VerbSpec[Req, Rep], message: Req, *, timeout_s: float | None = None) -> Rep:
        if self.away:
            raise RequestTimeoutError(f"{verb.verb.value} not answered")
        fields = message.to_wire()
        assert (fields.pop("job_id"), fields.pop("lease_id")) == (JOB, LEASE), "every request is on the job's lease"
        self.calls.append((verb.verb.value, fields))
        if verb is verbs.CHECKPOINT_URL:
            key = self.store.checkpoint_key_for(JOB, str(fields["sha256"]))
            return verb.reply.from_wire({"url": self.store.presign_put(key), "method": "PUT", "key": key, "expires_s": 600})
        return verb.reply.from_wire({"saved_ts": 1.0, "attempt": 1})

    def verbs(self) -> list[str]:
        return [verb for verb, _ in self.calls]


def _sync(tmp_path: Path, coordinator: Coordinator, *, max_bytes: int = 1 << 30,
          given: dict[str, Any] | None = None) -> tuple[CheckpointSync, list[str]]:
    lines: list[str] = []
    job_dir = tmp_path / "job"
    job_dir.mkdir(exist_ok=True)
    checkpoint = GrantedCheckpoint.from_wire(given) if given is not None else None
    sync = CheckpointSync(
        plan=CheckpointPlan(interval_s=60, max_bytes=max_bytes, given=checkpoint), job_id=JOB, lease_id=LEASE,
        folder=job_dir / "checkpoint",
        scratch=job_dir, request=coordinator, log=lines.append, progress=lambda: {"epoch": 4}, name="j",
    )
    sync.folder.mkdir(exist_ok=True)
    return sync, lines


@pytest.fixture
def coordinator(tmp_path: Path) -> Coordinator:
    store = FileStore(tmp_path / "store")
    store.check()
    return Coordinator(store)


def test_snapshot_hard_links_the_files_and_keeps_their_fingerprint(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"w" * 100)
    (src / "state.json").write_text("{}")
    snapshot(src, tmp_path / "snap")
    assert fingerprint(tmp_path / "snap") == fingerprint(src)
    assert os.stat(tmp_path / "snap" / "state.json").st_ino == os.stat(src / "state.json").st_ino


def test_snapshot_refuses_a_symlink(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "escape").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="symlink"):
        snapshot(src, tmp_path / "snap")


def test_a_sync_uploads_a_changed_folder_once_and_skips_an_unchanged_one(tmp_path: Path, coordinator: Coordinator) -> None:
    sync, _ = _sync(tmp_path, coordinator)
    assert sync.sync("interval") is False  # empty: nothing to keep
    (sync.folder / "state.json").write_text('{"step": 1}')
    assert sync.sync("interval") is True
    assert coordinator.verbs() == ["checkpoint_url", "checkpoint_saved"]
    saved = coordinator.calls[1][1]
    assert saved["progress"] == {"epoch": 4}
    key = coordinator.store.checkpoint_key_for(JOB, saved["sha256"])
    assert coordinator.store.hash_object(key) == (saved["sha256"], saved["size"])
    assert sync.sync("interval") is False
    assert len(coordinator.calls) == 2
    tmp = sync.folder / "state.json.tmp"
    tmp.write_text('{"step": 2}')
    os.replace(tmp, sync.folder / "state.json")
    assert sync.sync("interval") is True
    assert len(coordinator.calls) == 4


def test_a_folder_over_the_limit_is_not_synced_and_the_log_says_so_once(tmp_path: Path, coordinator: Coordinator) -> None:
    sync, lines = _sync(tmp_path, coordinator, max_bytes=1000)
    (sync.folder / "big.bin").write_bytes(b"x" * 2000)
    assert sync.sync("interval") is False
    (sync.folder / "more.bin").write_bytes(b"y")
    assert sync.sync("interval") is False
    assert coordinator.calls == []
    said = [line for line in lines if "over checkpoint_max_mib" in line]
    assert len(said) == 1 and "not synced" in said[0]


def test_a_failed_sync_is_logged_and_retried_at_the_next_interval(tmp_path: Path, coordinator: Coordinator) -> None:
    sync, lines = _sync(tmp_path, coordinator)
    (sync.folder / "state.json").write_text("{}")
    coordinator.away = True
    assert sync.sync("interval") is False
    assert any("failed, retried at the next interval" in line for line in lines)
    coordinator.away = False
    assert sync.sync("interval") is True


def test_a_symlink_in_the_folder_is_refused_with_a_line_in_the_log(tmp_path: Path, coordinator: Coordinator) -> None:
    sync, lines = _sync(tmp_path, coordinator)
    (sync.folder / "link").symlink_to(tmp_path)
    assert sync.sync("interval") is False
    assert coordinator.calls == []
    assert any("symlink" in line for line in lines)


def _bundle(tmp_path: Path, store: FileStore, content: bytes, *, zeros: int = 0) -> dict[str, Any]:
    """The grant's checkpoint of a folder with `state.json` holding `content` (and `zeros` bytes of a
    sparse file, which packs to almost nothing), stored in `store`."""
    src = tmp_path / "saved"
    src.mkdir()
    (src / "state.json").write_bytes(content)
    if zeros:
        with open(src / "zeros.bin", "wb") as fh:
            fh.truncate(zeros)
    sha256, size = pack_artifact(src, tmp_path / "b.tar.zst")
    key = store.checkpoint_key_for(JOB, sha256)
    store.put_file(key, tmp_path / "b.tar.zst")
    return {"url": store.presign_get(key), "sha256": sha256, "size": size, "attempt": 1, "saved_ts": 0.0}


def test_restore_fills_the_folder_and_reports_the_resume(tmp_path: Path, coordinator: Coordinator) -> None:
    given = _bundle(tmp_path, coordinator.store, b'{"step": 7}')
    sync, _ = _sync(tmp_path, coordinator, given=given)
    assert sync.restore() is True
    assert (sync.folder / "state.json").read_bytes() == b'{"step": 7}'
    assert coordinator.calls == [("checkpoint_start", {"resumed": True, "note": coordinator.calls[0][1]["note"],
                                                       "from_attempt": 1})]
    # What was restored is not uploaded again.
    assert sync.sync("interval") is False


def test_restore_of_a_checkpoint_with_the_wrong_sha256_starts_fresh_and_says_why(
    tmp_path: Path, coordinator: Coordinator
) -> None:
    given = _bundle(tmp_path, coordinator.store, b'{"step": 7}')
    key = coordinator.store.checkpoint_key_for(JOB, given["sha256"])
    (tmp_path / "garbage").write_bytes(b"corrupted")
    coordinator.store.put_file(key, tmp_path / "garbage")
    sync, lines = _sync(tmp_path, coordinator, given=given)
    assert sync.restore() is False
    assert list(sync.folder.iterdir()) == []
    verb, fields = coordinator.calls[0]
    assert verb == "checkpoint_start" and fields["resumed"] is False
    assert fields["rejected_sha256"] == given["sha256"]
    assert "sha256" in fields["note"] and fields["note"].startswith("started fresh")
    assert any("started fresh" in line for line in lines)


def _grant(**fields: Any) -> Grant:
    return Grant.from_wire({"job": {"id": JOB, "name": "j", "status": "claimed"}, "spec": {"id": JOB},
                            "trainer": {"name": "t"}, "lease_id": LEASE, "attempt": 1, "expires_ts": 1.0,
                            "lease_s": 90, **fields})


def test_a_grant_without_checkpoint_fields_or_for_a_non_resumable_trainer_gets_no_plan() -> None:
    assert CheckpointPlan.from_grant(_grant()) is None
    assert CheckpointPlan.from_grant(_grant(resumable=False, checkpoint_interval_s=5)) is None
    plan = CheckpointPlan.from_grant(_grant(resumable=True, checkpoint_interval_s=5, checkpoint_max_mib=1, checkpoint=None))
    assert plan == CheckpointPlan(interval_s=5, max_bytes=1 << 20, given=None)
    given = {"url": "file:///c", "sha256": "e" * 64, "size": 3, "attempt": 2, "saved_ts": 1.5}
    plan = CheckpointPlan.from_grant(_grant(resumable=True, checkpoint_interval_s=5, checkpoint=given))
    assert plan is not None and plan.given == GrantedCheckpoint.from_wire(given)


def test_restore_unpacks_within_checkpoint_max_mib_however_well_the_checkpoint_compresses(
    tmp_path: Path, coordinator: Coordinator
) -> None:
    # 8 MiB of zeros packs to a few hundred bytes: far past any ratio limit, and a checkpoint a sync may make.
    given = _bundle(tmp_path, coordinator.store, b"{}", zeros=8 << 20)
    sync, _ = _sync(tmp_path, coordinator, max_bytes=9 << 20, given=given)
    assert sync.restore() is True
    assert (sync.folder / "zeros.bin").stat().st_size == 8 << 20


def test_restore_of_a_checkpoint_unpacking_past_checkpoint_max_mib_rejects_it(
    tmp_path: Path, coordinator: Coordinator
) -> None:
    given = _bundle(tmp_path, coordinator.store, b"{}", zeros=64 << 20)
    sync, _ = _sync(tmp_path, coordinator, max_bytes=1 << 20, given=given)
    assert sync.restore() is False
    assert list(sync.folder.iterdir()) == []
    fields = coordinator.calls[0][1]
    assert fields["rejected_sha256"] == given["sha256"] and "unpacks to more than 1048576 bytes" in fields["note"]


def test_restore_that_does_not_fit_this_hosts_free_disk_starts_fresh_and_keeps_the_checkpoint(
    tmp_path: Path, coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = _bundle(tmp_path, coordinator.store, b"{}", zeros=8 << 20)
    sync, _ = _sync(tmp_path, coordinator, max_bytes=1 << 30, given=given)
    free = RESTORE_DISK_RESERVE_BYTES + given["size"] + (1 << 20)  # room for 1 MiB, not 8
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=1 << 40, used=0, free=free))
    assert sync.restore() is False
    fields = coordinator.calls[-1][1]
    assert "rejected_sha256" not in fields and "unpacks to more than" in fields["note"]
    free = RESTORE_DISK_RESERVE_BYTES - 1  # not even the download fits
    assert sync.restore() is False
    fields = coordinator.calls[-1][1]
    assert "rejected_sha256" not in fields and "free on this host's disk" in fields["note"]
