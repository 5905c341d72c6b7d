"""The artifact store's boundary: the `ArtifactStore` protocol the coordinator, the agent and the CLI use, and
`open_store(url)`, which opens (and checks) the store a URL names: file:///abs/path or s3://bucket[/prefix].

The backends are `files.py` (`FileStore`) and `s3.py` (`S3Store`, the only importer of minio); the
credential-free side used by agents and the CLI, `upload_to_url` and `download_from_url`, is `store/transfer.py`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit
from urllib.request import url2pathname

from mqfleet.defaults import ENV_S3_ACCESS_KEY, ENV_S3_ENDPOINT, ENV_S3_SECRET_KEY, ENV_S3_SECURE
from mqfleet.errors import ConfigurationError
from mqfleet.store.files import FileStore
from mqfleet.store.s3 import S3Store
from mqfleet.store.transfer import PresignedUpload


class ArtifactStore(Protocol):
    """What the coordinator, the agent and the CLI need from a store of artifact objects."""

    url: str

    def key_for(self, sha256: str) -> str:
        """Where the verified artifact with this digest lives: `artifacts/<sha256>.tar.zst`."""
        ...

    def staging_key(self, lease_id: str) -> str:
        """Where the holder of one lease uploads before the coordinator has checked the bytes."""
        ...

    def promote(self, src_key: str, dest_key: str) -> None:
        """Move an object server-side (copy then delete, or a rename); dest is replaced whole, never partly."""
        ...

    def checkpoint_key_for(self, job_id: str, sha256: str) -> str:
        """Where a job's checkpoint with this digest lives: `checkpoints/<job id>/<sha256>.tar.zst`."""
        ...

    def presign_put(self, key: str, expires_s: int = 3600) -> str: ...
    def presign_upload(self, key: str, size: int, expires_s: int) -> PresignedUpload:
        """What an agent uploads `key` with: on S3 a POST form the store refuses unless it carries exactly `size` bytes."""
    def presign_get(self, key: str, expires_s: int = 3600) -> str: ...
    def stat(self, key: str) -> int | None: ...
    def hash_object(self, key: str) -> tuple[str, int]: ...
    def delete(self, key: str) -> None: ...
    def list_objects(self) -> Iterator[tuple[str, int]]: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def get_file(self, key: str, dest: Path) -> None: ...
    def check(self) -> None: ...
    def probe(self) -> None:
        """Look, changing nothing, that the bucket or folder is there and usable; StoreError naming what is not.

        Unlike check(), which creates what is missing at start, this is for health: a
        folder or bucket removed later must show as failing, not be quietly recreated.
        """
        ...


def _is_loopback(endpoint: str) -> bool:
    host = urlsplit(f"//{endpoint}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={text!r}: expected true or false")


def _open_s3(url: str, endpoint: str | None, access_key: str | None, secret_key: str | None, secure: bool | None) -> S3Store:
    parts = urlsplit(url)
    bucket, prefix = parts.netloc, parts.path
    if not bucket:
        raise ConfigurationError(f"store URL {url!r}: no bucket (expected s3://bucket or s3://bucket/prefix)")
    endpoint = endpoint or os.environ.get(ENV_S3_ENDPOINT, "")
    if not endpoint:
        raise ConfigurationError(f"store URL {url!r}: no S3 endpoint; pass one or set {ENV_S3_ENDPOINT} (e.g. 127.0.0.1:9000)")
    # Accept "http://host:port" as well as "host:port"; the scheme then decides `secure` unless it was given.
    if "://" in endpoint:
        ep = urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.netloc:
            raise ConfigurationError(f"S3 endpoint {endpoint!r}: expected host:port or http(s)://host:port")
        if secure is None:
            secure = ep.scheme == "https"
        endpoint = ep.netloc
    if secure is None:
        env_secure = os.environ.get(ENV_S3_SECURE)
        secure = _parse_bool(ENV_S3_SECURE, env_secure) if env_secure else not _is_loopback(endpoint)
    access_key = access_key if access_key is not None else os.environ.get(ENV_S3_ACCESS_KEY)
    secret_key = secret_key if secret_key is not None else os.environ.get(ENV_S3_SECRET_KEY)
    if not access_key or not secret_key:
        raise ConfigurationError(f"store URL {url!r}: S3 credentials missing; set {ENV_S3_ACCESS_KEY} and {ENV_S3_SECRET_KEY}")
    return S3Store(bucket=bucket, prefix=prefix, endpoint=endpoint, access_key=access_key, secret_key=secret_key, secure=secure)


def open_store(
    url: str,
    *,
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    secure: bool | None = None,
) -> ArtifactStore:
    """Open (and check) the store a URL names: file:///abs/path or s3://bucket[/prefix]; creates the bucket or folder."""
    parts = urlsplit(url)
    store: FileStore | S3Store
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigurationError(f"store URL {url!r}: a file store must be local (file:///abs/path)")
        path = Path(url2pathname(parts.path))
        if not path.is_absolute():
            raise ConfigurationError(f"store URL {url!r}: the path must be absolute (file:///abs/path)")
        store = FileStore(path)
    elif parts.scheme == "s3":
        store = _open_s3(url, endpoint, access_key, secret_key, secure)
    else:
        raise ConfigurationError(f"store URL {url!r}: expected file:///abs/path or s3://bucket[/prefix]")
    store.check()
    return store
