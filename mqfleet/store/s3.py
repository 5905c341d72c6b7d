"""`S3Store`: artifact objects in an S3 bucket through the minio SDK. The only module that imports minio; every minio
and urllib3 failure is turned into `StoreError` or `ObjectMissingError` here.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.datatypes import PostPolicy
from minio.error import MinioException, S3Error

from mqfleet.errors import ConfigurationError, ObjectMissingError, StoreError
from mqfleet.store import keys
from mqfleet.store.transfer import CHUNK_BYTES, PresignedUpload
from mqfleet.wire.requests import UploadMethod

logger = logging.getLogger(__name__)


#: Largest object S3 copies in one request; bigger ones are copied part by part.
_MAX_SINGLE_COPY_BYTES = 5 * 1024**3
#: S3 error codes that mean "no such object" (servers differ in which one a HEAD gets).
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"})


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
        return keys.artifact_key(self.prefix, sha256)

    def staging_key(self, lease_id: str) -> str:
        return keys.staging_key(self.prefix, lease_id)

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
        return keys.checkpoint_key(self.prefix, job_id, sha256)

    def presign_put(self, key: str, expires_s: int = 3600) -> str:
        with self._translate("presign PUT", key):
            return self._client.presigned_put_object(self.bucket, key, expires=timedelta(seconds=expires_s))

    def presign_upload(self, key: str, size: int, expires_s: int) -> PresignedUpload:
        # A presigned PUT signs no length, so its holder could store any amount; a POST policy's
        # content-length-range is checked by the store itself, and its `key` condition pins the key.
        policy = PostPolicy(self.bucket, datetime.now(timezone.utc) + timedelta(seconds=expires_s))
        policy.add_equals_condition("key", key)
        policy.add_content_length_range_condition(size, size)
        with self._translate("presign POST", key):
            form = self._client.presigned_post_policy(policy)
        scheme = "https" if self.secure else "http"  # path-style, as this SDK addresses the endpoint
        return PresignedUpload(url=f"{scheme}://{self.endpoint}/{self.bucket}", method=UploadMethod.POST, fields={"key": key, **form})

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
