"""`FileStore`: artifact objects as files under a root folder, for one-machine fleets; presigned URLs are file:// URLs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from mqfleet.errors import ObjectMissingError, StoreError
from mqfleet.store import keys
from mqfleet.store.transfer import CHUNK_BYTES, PresignedUpload, download_from_url, upload_to_url


class FileStore:
    """Objects as files under a root folder, for one-machine fleets; presigned URLs are plain file:// URLs."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()

    def key_for(self, sha256: str) -> str:
        return keys.artifact_key("", sha256)

    def staging_key(self, lease_id: str) -> str:
        return keys.staging_key("", lease_id)

    def promote(self, src_key: str, dest_key: str) -> None:
        src, dest = self._path(src_key), self._path(dest_key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)  # atomic within one file system: readers see the old or the new file
        except FileNotFoundError as e:
            raise ObjectMissingError(f"{self.url}: no object {src_key}") from e
        except OSError as e:
            raise StoreError(f"{self.url}: move {src_key} to {dest_key}: {e}") from e

    def checkpoint_key_for(self, job_id: str, sha256: str) -> str:
        return keys.checkpoint_key("", job_id, sha256)

    def _path(self, key: str) -> Path:
        # Normalised by text, not resolve(): a key holds no links to follow (the store makes every one),
        # and resolving walked each level with a system call on every stat (a twentieth of a completion).
        path = Path(os.path.normpath(self.root / key))
        if not key or not path.is_relative_to(self.root) or path == self.root:
            raise StoreError(f"key {key!r} leaves the store root {self.root}")
        return path

    def presign_put(self, key: str, expires_s: int = 3600) -> str:
        return self._path(key).as_uri()

    def presign_upload(self, key: str, size: int, expires_s: int) -> PresignedUpload:
        # A file store's writer reaches its folder directly: no URL could bound it (docs/SECURITY.md, "Artifacts").
        return PresignedUpload(url=self.presign_put(key))

    def presign_get(self, key: str, expires_s: int = 3600) -> str:
        return self._path(key).as_uri()

    def stat(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"{self.url}: stat {key}: {e}") from e

    def hash_object(self, key: str) -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        try:
            with open(self._path(key), "rb") as fh:
                while chunk := fh.read(CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
        except FileNotFoundError as e:
            raise ObjectMissingError(f"{self.url}: no object {key}") from e
        except OSError as e:
            raise StoreError(f"{self.url}: read {key}: {e}") from e
        return digest.hexdigest(), size

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as e:
            raise StoreError(f"{self.url}: delete {key}: {e}") from e

    def list_objects(self) -> Iterator[tuple[str, int]]:
        """(key, size) of every object in the store, in no particular order."""
        try:
            for path in self.root.rglob("*"):
                if path.is_file() and not path.name.startswith("."):
                    yield path.relative_to(self.root).as_posix(), path.stat().st_size
        except OSError as e:
            raise StoreError(f"{self.url}: list: {e}") from e

    def put_file(self, key: str, path: Path) -> None:
        upload_to_url(self.presign_put(key), Path(path))

    def get_file(self, key: str, dest: Path) -> None:
        download_from_url(self.presign_get(key), Path(dest))

    def check(self) -> None:
        try:
            (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{self.url}: cannot create the store folder: {e}") from e
        if not os.access(self.root / "artifacts", os.W_OK):
            raise StoreError(f"{self.url}: the store folder is not writable")

    def probe(self) -> None:
        folder = self.root / "artifacts"
        try:
            if not folder.is_dir():
                raise StoreError(f"{self.url}: the store folder {folder} is missing; recreate it (or restart the "
                                 "coordinator, which creates it) and check what removed it")
        except OSError as e:
            raise StoreError(f"{self.url}: cannot stat the store folder {folder}: {e}") from e
        if not os.access(folder, os.W_OK):
            raise StoreError(f"{self.url}: the store folder {folder} is not writable by the coordinator")

    def __repr__(self) -> str:
        return f"FileStore({self.url!r})"
