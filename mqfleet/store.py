"""The artifact store: objects keyed by sha256 in a local folder (file://) or an S3 bucket (s3://).

The only module that imports minio; every minio and urllib3 failure is turned into `StoreError` or
`ObjectMissingError` here. Also holds the credential-free side used by agents and the CLI:
`upload_to_url` and `download_from_url` move bytes to and from presigned (or file://) URLs.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit
from urllib.request import url2pathname

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.datatypes import PostPolicy
from minio.error import MinioException, S3Error

from mqfleet import store_keys
from mqfleet.defaults import ENV_S3_ACCESS_KEY, ENV_S3_ENDPOINT, ENV_S3_SECRET_KEY, ENV_S3_SECURE
from mqfleet.errors import ConfigurationError, ObjectMissingError, StoreError

# Re-exported: callers that hold no credentials should import them from mqfleet.transfer.
from mqfleet.transfer import CHUNK_BYTES, PresignedUpload, download_from_url, upload_to_url

logger = logging.getLogger(__name__)

__all__ = ["ArtifactStore", "FileStore", "S3Store", "download_from_url", "open_store", "upload_to_url"]

#: Largest object S3 copies in one request; bigger ones are copied part by part.
_MAX_SINGLE_COPY_BYTES = 5 * 1024**3
#: S3 error codes that mean "no such object" (servers differ in which one a HEAD gets).
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"})


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


class FileStore:
    """Objects as files under a root folder, for one-machine fleets; presigned URLs are plain file:// URLs."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()

    def key_for(self, sha256: str) -> str:
        return store_keys.artifact_key("", sha256)

    def staging_key(self, lease_id: str) -> str:
        return store_keys.staging_key("", lease_id)

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
        return store_keys.checkpoint_key("", job_id, sha256)

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


class S3Store:
    """Objects in an S3 bucket (MinIO, SeaweedFS, AWS...), optionally under a key prefix, through the minio SDK."""

    def __init__(self, *, bucket: str, prefix: str, endpoint: str, access_key: str, secret_key: str, secure: bool) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint = endpoint
        self.secure = secure
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        # Bounded connect timeout and few retries: minio's defaults retry an unreachable endpoint for a long time,
        # which would hang `check()` and every CLI call behind it.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=300.0),
            maxsize=10,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        try:
            self._client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, http_client=http)
        except ValueError as e:
            raise ConfigurationError(f"S3 endpoint {endpoint!r}: {e}") from e

    def _where(self, key: str = "") -> str:
        scheme = "https" if self.secure else "http"
        return f"s3://{self.bucket}/{key} at {scheme}://{self.endpoint}"

    @contextmanager
    def _translate(self, action: str, key: str = "") -> Iterator[None]:
        """Turn minio/urllib3 failures into the store errors; nothing minio-specific leaves this module."""
        try:
            yield
        except S3Error as e:
            if key and e.code in _MISSING_CODES:
                raise ObjectMissingError(f"{self._where(key)}: no such object") from e
            raise StoreError(f"{action} {self._where(key)}: {e.code}: {e.message}") from e
        except MinioException as e:
            raise StoreError(f"{action} {self._where(key)}: {e}") from e
        except urllib3.exceptions.HTTPError as e:
            raise StoreError(f"{action} {self._where(key)}: cannot reach the S3 endpoint: {e}") from e
        except (OSError, ValueError) as e:
            # minio raises ValueError for names it refuses (e.g. an invalid bucket name) before any request.
            raise StoreError(f"{action} {self._where(key)}: {e}") from e

    def key_for(self, sha256: str) -> str:
        return store_keys.artifact_key(self.prefix, sha256)

    def staging_key(self, lease_id: str) -> str:
        return store_keys.staging_key(self.prefix, lease_id)

    def promote(self, src_key: str, dest_key: str) -> None:
        # Server-side: the bytes never pass through the coordinator. S3 has no rename, so copy then delete;
        # a copy replaces dest whole, so a concurrent reader sees the old or the new object.
        with self._translate("promote", src_key):
            size = int(self._client.stat_object(self.bucket, src_key).size or 0)
            if size <= _MAX_SINGLE_COPY_BYTES:
                self._client.copy_object(self.bucket, dest_key, CopySource(self.bucket, src_key))
            else:
                self._client.compose_object(self.bucket, dest_key, [ComposeSource(self.bucket, src_key)])
            self._client.remove_object(self.bucket, src_key)

    def checkpoint_key_for(self, job_id: str, sha256: str) -> str:
        return store_keys.checkpoint_key(self.prefix, job_id, sha256)

    def presign_put(self, key: str, expires_s: int = 3600) -> str:
        with self._translate("presign PUT", key):
            return self._client.presigned_put_object(self.bucket, key, expires=timedelta(seconds=expires_s))

    def presign_upload(self, key: str, size: int, expires_s: int) -> PresignedUpload:
        # A presigned PUT signs no length; a POST policy's content-length-range is enforced by the store itself.
        policy = PostPolicy(self.bucket, datetime.now(timezone.utc) + timedelta(seconds=expires_s))
        policy.add_equals_condition("key", key)
        policy.add_content_length_range_condition(size, size)
        with self._translate("presign POST", key):
            form = self._client.presigned_post_policy(policy)
        scheme = "https" if self.secure else "http"  # path-style, as SeaweedFS, MinIO and S3 all take a POST
        return PresignedUpload(url=f"{scheme}://{self.endpoint}/{self.bucket}", method="POST", fields={"key": key, **form})

    def presign_get(self, key: str, expires_s: int = 3600) -> str:
        with self._translate("presign GET", key):
            return self._client.presigned_get_object(self.bucket, key, expires=timedelta(seconds=expires_s))

    def stat(self, key: str) -> int | None:
        try:
            with self._translate("stat", key):
                return int(self._client.stat_object(self.bucket, key).size or 0)
        except ObjectMissingError:
            return None

    def hash_object(self, key: str) -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        with self._translate("read", key):
            response = self._client.get_object(self.bucket, key)
            try:
                for chunk in response.stream(CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
            finally:
                response.close()
                response.release_conn()
        return digest.hexdigest(), size

    def delete(self, key: str) -> None:
        with self._translate("delete", key):
            self._client.remove_object(self.bucket, key)

    def list_objects(self) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under the store's prefix, in no particular order."""
        with self._translate("list"):
            for obj in self._client.list_objects(self.bucket, prefix=self.prefix or None, recursive=True):
                if obj.object_name and not obj.is_dir:
                    yield obj.object_name, int(obj.size or 0)

    def put_file(self, key: str, path: Path) -> None:
        with self._translate("upload", key):
            self._client.fput_object(self.bucket, key, str(path))

    def get_file(self, key: str, dest: Path) -> None:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        with self._translate("download", key):
            self._client.fget_object(self.bucket, key, str(dest))

    def check(self) -> None:
        with self._translate("check bucket"):
            if self._client.bucket_exists(self.bucket):
                return
            try:
                self._client.make_bucket(self.bucket)
                logger.info("store %s: created bucket %s", self.url, self.bucket)
            except S3Error as e:
                # Another process may have created it between the two calls.
                if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def probe(self) -> None:
        with self._translate("stat bucket"):
            exists = self._client.bucket_exists(self.bucket)
        if not exists:
            raise StoreError(f"{self.url}: bucket {self.bucket} does not exist on {self.endpoint}; recreate it "
                             "(or restart the coordinator, which creates it) and check what removed it")

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self.endpoint!r})"


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


def open_store(url: str, *, endpoint: str | None = None, access_key: str | None = None, secret_key: str | None = None,
               secure: bool | None = None) -> ArtifactStore:
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
