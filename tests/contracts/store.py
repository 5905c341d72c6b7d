"""The artifact store contract: what every ArtifactStore must do, run against FileStore and S3Store alike."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from mqfleet.errors import ArtifactMismatchError, BadRequestError, ObjectMissingError, StoreError
from mqfleet.store.base import ArtifactStore
from mqfleet.store.transfer import download_from_url, upload_to_url
from mqfleet.wire.requests import UploadMethod


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StoreContract:
    """Mixin: a test class provides a `store` fixture; every test here must pass for it."""

    #: Whether presigned URLs carry a signature the server checks (file:// URLs do not).
    signs_urls = True

    def test_key_for_places_the_object_under_artifacts_by_sha256(self, store: ArtifactStore) -> None:
        digest = _sha(b"x")
        assert store.key_for(digest).endswith(f"artifacts/{digest}.tar.zst")

    def test_key_for_refuses_anything_but_a_sha256_digest(self, store: ArtifactStore) -> None:
        for bad in ("../../etc/passwd", "A" * 64, "ab" * 31, ""):
            with pytest.raises(BadRequestError):
                store.key_for(bad)

    def test_put_then_stat_gives_the_size_and_hash_object_the_sha256(self, store: ArtifactStore, tmp_path: Path) -> None:
        data = os.urandom(70_000)
        key = store.key_for(_sha(data))
        store.put_file(key, _write(tmp_path / "a.bin", data))
        assert store.stat(key) == len(data)
        assert store.hash_object(key) == (_sha(data), len(data))

    def test_get_file_returns_the_bytes_that_were_put(self, store: ArtifactStore, tmp_path: Path) -> None:
        data = os.urandom(10_000)
        key = store.key_for(_sha(data))
        store.put_file(key, _write(tmp_path / "a.bin", data))
        store.get_file(key, tmp_path / "out" / "b.bin")
        assert (tmp_path / "out" / "b.bin").read_bytes() == data

    def test_upload_to_a_presigned_put_url_stores_what_stat_and_hash_object_then_see(
        self, store: ArtifactStore, tmp_path: Path
    ) -> None:
        # Several MiB, so the body goes out in many blocks rather than one write.
        data = os.urandom(3 * 1024 * 1024 + 17)
        key = store.key_for(_sha(data))
        upload_to_url(store.presign_put(key, expires_s=300), _write(tmp_path / "a.bin", data))
        assert store.stat(key) == len(data)
        assert store.hash_object(key) == (_sha(data), len(data))

    def test_download_from_a_presigned_get_url_returns_the_object(self, store: ArtifactStore, tmp_path: Path) -> None:
        data = os.urandom(2 * 1024 * 1024 + 5)
        key = store.key_for(_sha(data))
        store.put_file(key, _write(tmp_path / "a.bin", data))
        download_from_url(store.presign_get(key, expires_s=300), tmp_path / "dl" / "a.bin")
        assert (tmp_path / "dl" / "a.bin").read_bytes() == data

    def test_a_missing_object_stats_as_none_and_hash_object_raises_object_missing(self, store: ArtifactStore) -> None:
        key = store.key_for(_sha(b"never stored"))
        assert store.stat(key) is None
        with pytest.raises(ObjectMissingError):
            store.hash_object(key)

    def test_downloading_a_missing_object_raises_object_missing_and_leaves_no_file(
        self, store: ArtifactStore, tmp_path: Path
    ) -> None:
        key = store.key_for(_sha(b"never stored"))
        with pytest.raises(ObjectMissingError):
            download_from_url(store.presign_get(key), tmp_path / "x.bin")
        with pytest.raises(ObjectMissingError):
            store.get_file(key, tmp_path / "y.bin")
        assert not (tmp_path / "x.bin").exists()

    def test_delete_removes_the_object_and_deleting_again_is_harmless(self, store: ArtifactStore, tmp_path: Path) -> None:
        data = b"to be deleted"
        key = store.key_for(_sha(data))
        store.put_file(key, _write(tmp_path / "a.bin", data))
        store.delete(key)
        assert store.stat(key) is None
        store.delete(key)

    def test_list_objects_names_every_stored_object_with_its_size(self, store: ArtifactStore, tmp_path: Path) -> None:
        keys = {store.key_for(_sha(data)): len(data) for data in (b"listed one", b"listed two, longer")}
        for key, data in zip(keys, (b"listed one", b"listed two, longer"), strict=True):
            store.put_file(key, _write(tmp_path / f"{len(data)}.bin", data))
        listed = dict(store.list_objects())
        assert {k: listed.get(k) for k in keys} == keys
        store.delete(next(iter(keys)))
        assert next(iter(keys)) not in dict(store.list_objects())

    def test_putting_a_key_again_replaces_the_object(self, store: ArtifactStore, tmp_path: Path) -> None:
        key = store.key_for(_sha(b"slot"))
        store.put_file(key, _write(tmp_path / "a.bin", b"first version"))
        upload_to_url(store.presign_put(key), _write(tmp_path / "b.bin", b"second"))
        assert store.hash_object(key) == (_sha(b"second"), 6)

    def test_check_passes_on_a_usable_store(self, store: ArtifactStore) -> None:
        store.check()

    def test_probe_passes_on_a_usable_store(self, store: ArtifactStore) -> None:
        store.check()
        store.probe()

    def test_a_presigned_put_url_with_a_tampered_signature_is_refused(self, store: ArtifactStore, tmp_path: Path) -> None:
        if not self.signs_urls:
            pytest.skip("file:// URLs carry no signature")
        key = store.key_for(_sha(b"tamper"))
        parts = urlsplit(store.presign_put(key))
        query = dict(parse_qsl(parts.query))
        signature = query["X-Amz-Signature"]
        query["X-Amz-Signature"] = ("0" if signature[0] != "0" else "1") + signature[1:]
        tampered = urlunsplit(parts._replace(query=urlencode(query)))
        with pytest.raises(StoreError, match="403"):
            upload_to_url(tampered, _write(tmp_path / "a.bin", b"evil"))
        assert store.stat(key) is None

    def test_staging_key_is_per_lease_and_outside_the_artifacts(self, store: ArtifactStore) -> None:
        lease = "ab" * 16
        key = store.staging_key(lease)
        assert lease in key and "artifacts/" not in key
        assert store.staging_key("cd" * 16) != key

    def test_staging_key_refuses_anything_but_a_lease_id(self, store: ArtifactStore) -> None:
        for bad in ("../artifacts/x", "AB" * 16, "ab" * 4, "", "ab" * 16 + "/x"):
            with pytest.raises(BadRequestError):
                store.staging_key(bad)

    def test_promote_moves_a_staged_object_to_its_artifact_key(self, store: ArtifactStore, tmp_path: Path) -> None:
        data = os.urandom(50_000)
        staged, final = store.staging_key("ef" * 16), store.key_for(_sha(data))
        upload_to_url(store.presign_put(staged, expires_s=120), _write(tmp_path / "a.bin", data))
        store.promote(staged, final)
        assert store.stat(staged) is None
        assert store.hash_object(final) == (_sha(data), len(data))

    def test_promote_replaces_an_existing_object_whole(self, store: ArtifactStore, tmp_path: Path) -> None:
        final = store.key_for(_sha(b"slot-2"))
        store.put_file(final, _write(tmp_path / "old.bin", b"old bytes, longer than the new"))
        staged = store.staging_key("01" * 16)
        store.put_file(staged, _write(tmp_path / "new.bin", b"new"))
        store.promote(staged, final)
        assert store.hash_object(final) == (_sha(b"new"), 3)

    def test_promoting_a_missing_object_raises_object_missing_and_changes_nothing(
        self, store: ArtifactStore, tmp_path: Path
    ) -> None:
        final = store.key_for(_sha(b"kept"))
        store.put_file(final, _write(tmp_path / "k.bin", b"kept"))
        with pytest.raises(ObjectMissingError):
            store.promote(store.staging_key("23" * 16), final)
        assert store.hash_object(final) == (_sha(b"kept"), 4)

    def test_an_upload_presigned_for_a_size_stores_an_object_of_that_size(self, store: ArtifactStore, tmp_path: Path) -> None:
        data = os.urandom(2 * 1024 * 1024 + 3)
        key = store.staging_key("45" * 16)
        upload = store.presign_upload(key, len(data), expires_s=120)
        upload_to_url(upload.url, _write(tmp_path / "a.bin", data), method=upload.method, fields=upload.fields)
        assert store.hash_object(key) == (_sha(data), len(data))

    def test_an_upload_presigned_for_a_size_refuses_any_other_size_and_any_other_key(
        self, store: ArtifactStore, tmp_path: Path
    ) -> None:
        if not self.signs_urls:
            pytest.skip("a file store's writer reaches its folder directly; no URL bounds it")
        key = store.staging_key("67" * 16)
        upload = store.presign_upload(key, 100, expires_s=120)
        assert upload.method == "POST"
        for wrong in (101, 99, 1024 * 1024):
            with pytest.raises(StoreError, match="400"):
                upload_to_url(upload.url, _write(tmp_path / "w.bin", b"x" * wrong), method=UploadMethod.POST, fields=upload.fields)
        other = store.staging_key("89" * 16)
        with pytest.raises(StoreError, match="403"):
            upload_to_url(upload.url, _write(tmp_path / "o.bin", b"x" * 100), method=UploadMethod.POST,
                          fields={**upload.fields, "key": other})
        # Nor does the form's URL take a PUT: it carries no signature of its own.
        with pytest.raises(StoreError):
            upload_to_url(f"{upload.url}/{key}", _write(tmp_path / "p.bin", b"x" * 5000))
        assert store.stat(key) is None and store.stat(other) is None

    def test_a_download_of_a_known_size_reads_no_byte_past_it_and_refuses_another_size(
        self, store: ArtifactStore, tmp_path: Path
    ) -> None:
        data = os.urandom(3 * 1024 * 1024)
        key = store.key_for(_sha(data))
        store.put_file(key, _write(tmp_path / "a.bin", data))
        download_from_url(store.presign_get(key), tmp_path / "ok.bin", size=len(data))
        assert (tmp_path / "ok.bin").read_bytes() == data
        for expected in (95, len(data) + 1):
            with pytest.raises(ArtifactMismatchError, match=str(expected)):
                download_from_url(store.presign_get(key), tmp_path / "no.bin", size=expected)
            assert not (tmp_path / "no.bin").exists()
        empty = store.key_for(_sha(b""))
        store.put_file(empty, _write(tmp_path / "empty.bin", b""))
        with pytest.raises(ArtifactMismatchError, match="expected 10"):
            download_from_url(store.presign_get(empty), tmp_path / "no.bin", size=10)
