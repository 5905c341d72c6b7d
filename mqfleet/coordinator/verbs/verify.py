"""Checks an uploaded artifact in the store before its job may become `completed`.

Agents never write `artifacts/<sha256>.tar.zst` themselves: each lease uploads to its own
staging key, and only the coordinator, once it has hashed the staged bytes, moves them to
the artifact key (docs/SECURITY.md, "Artifacts"). So a host can neither overwrite another
job's artifact nor replace its own after it was verified.
"""

from __future__ import annotations

import logging
import re

from mqfleet.errors import ArtifactMismatchError, BadRequestError, ObjectMissingError
from mqfleet.store.base import ArtifactStore

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_digest(sha256: str, size: int) -> None:
    """Refuse a digest or size that cannot name an artifact."""
    if not _SHA256.match(sha256):
        raise BadRequestError("field 'sha256' must be 64 lowercase hex characters")
    if size < 0:
        raise BadRequestError("field 'size' must not be negative")


def _check_bytes(store: ArtifactStore, key: str, sha256: str, size: int, *, what: str) -> None:
    """Read the object back and hash it; a mismatching object is deleted so nothing can ever serve it."""
    actual_sha, actual_size = store.hash_object(key)
    if actual_sha == sha256 and actual_size == size:
        return
    logger.warning(
        "artifact %s: %s object has sha256 %s and %d bytes, claimed %d; deleting it",
        sha256[:12],
        what,
        actual_sha[:12],
        actual_size,
        size,
    )
    store.delete(key)
    raise ArtifactMismatchError(
        f"{what} object is {actual_size} bytes with sha256 {actual_sha[:12]}, "
        f"not {size} bytes with sha256 {sha256[:12]}; upload again"
    )


def accept_artifact(store: ArtifactStore, sha256: str, size: int, *, lease_id: str) -> str:
    """The artifact key of a verified artifact, or ArtifactMismatchError / ObjectMissingError.

    Sizes are compared (a stat) before a byte is read. With an object staged by this lease: hash it,
    then promote it to the artifact key. With nothing staged (the upload was skipped because the digest
    was stored already): hash the stored object again, since a size alone proves nothing about bytes.
    """
    check_digest(sha256, size)
    key = store.key_for(sha256)
    staged = store.staging_key(lease_id)
    staged_size = store.stat(staged)
    if staged_size is not None:
        if staged_size != size:
            store.delete(staged)
            raise ArtifactMismatchError(f"staged object is {staged_size} bytes, not {size}; upload again")
        _check_bytes(store, staged, sha256, size, what="staged")
        store.promote(staged, key)
        return key
    stored_size = store.stat(key)
    if stored_size is None:
        raise ObjectMissingError(f"artifact {sha256[:12]} is not in the store ({store.url}); upload it first")
    if stored_size != size:
        # The request is wrong, not the object: nothing is read, and the stored artifact stays.
        raise ArtifactMismatchError(f"stored artifact {sha256[:12]} is {stored_size} bytes, not {size}; "
                                    "complete with its own size, or upload yours")
    _check_bytes(store, key, sha256, size, what="stored")
    return key
