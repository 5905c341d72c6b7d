"""Checks an uploaded artifact in the store before its job may become `completed`."""

from __future__ import annotations

import logging
import re

from mqfleet.errors import ArtifactMismatchError, BadRequestError, ObjectMissingError
from mqfleet.store import ArtifactStore

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_digest(sha256: str, size: int) -> None:
    """Refuse a digest or size that cannot name an artifact."""
    if not _SHA256.match(sha256):
        raise BadRequestError("field 'sha256' must be 64 lowercase hex characters")
    if size < 0:
        raise BadRequestError("field 'size' must not be negative")


def verify_artifact(store: ArtifactStore, sha256: str, size: int, *, trusted: bool) -> str:
    """The store key of a verified artifact, or ArtifactMismatchError / ObjectMissingError.

    `trusted` is true when this digest was verified before (a deduplicated upload): then a
    size check is enough. Otherwise the object is read back and hashed, and a mismatching
    object is deleted so that a later `exists` answer can never point at bad bytes.
    """
    check_digest(sha256, size)
    key = store.key_for(sha256)
    stored_size = store.stat(key)
    if stored_size is None:
        raise ObjectMissingError(f"artifact {sha256[:12]} is not in the store ({store.url}); upload it first")
    if trusted and stored_size == size:
        return key
    actual_sha, actual_size = store.hash_object(key)
    if actual_sha != sha256 or actual_size != size:
        logger.warning(
            "artifact %s: stored object has sha256 %s and %d bytes, claimed %d; deleting it",
            sha256[:12],
            actual_sha[:12],
            actual_size,
            size,
        )
        store.delete(key)
        raise ArtifactMismatchError(
            f"stored object is {actual_size} bytes with sha256 {actual_sha[:12]}, "
            f"not {size} bytes with sha256 {sha256[:12]}; upload again"
        )
    return key
