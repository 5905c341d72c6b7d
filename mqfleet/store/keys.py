"""Where objects live in the artifact store: the key of a verified artifact, of a lease's staging upload and
of a job's checkpoint, each refusing anything that could climb out of its folder.
"""

from __future__ import annotations

import re

from mqfleet.errors import BadRequestError

#: What a sha256 looks like in a key: lowercase hex only, so no key can climb out of the store.
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: What a lease id looks like in a staging key (the coordinator issues `secrets.token_hex(16)`).
_LEASE_ID = re.compile(r"[0-9a-f]{16,64}")


def artifact_key(prefix: str, sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
        raise BadRequestError(f"not a lowercase sha256 hex digest: {sha256[:80]!r}")
    return f"{prefix}artifacts/{sha256}.tar.zst"


def staging_key(prefix: str, lease_id: str) -> str:
    # Lease ids are the coordinator's own hex tokens; anything else could climb out of staging/.
    if not _LEASE_ID.fullmatch(lease_id):
        raise BadRequestError(f"not a lease id (16-64 lowercase hex characters): {lease_id[:80]!r}")
    return f"{prefix}staging/{lease_id}.tar.zst"


def checkpoint_key(prefix: str, job_id: str, sha256: str) -> str:
    # One key per job and content: a new checkpoint never overwrites the one a starting attempt may be reading.
    for what, value in (("job id", job_id), ("sha256", sha256)):
        if not _SHA256.fullmatch(value):
            raise BadRequestError(f"checkpoint {what} is not a lowercase sha256 hex digest: {value[:80]!r}")
    return f"{prefix}checkpoints/{job_id}/{sha256}.tar.zst"
