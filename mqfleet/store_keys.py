"""Where each kind of object lives in the store, under the store's key prefix (docs/SECURITY.md, "Artifacts").

Every name a key is made of is checked to be the coordinator's own hex here, so no key can climb out
of its folder whatever a request said.
"""

from __future__ import annotations

import re

from mqfleet.errors import BadRequestError

#: What a sha256 (and a job id) looks like in a key: lowercase hex only.
SHA256 = re.compile(r"[0-9a-f]{64}")
#: What a lease id looks like in a staging key (the coordinator issues `secrets.token_hex(16)`).
LEASE_ID = re.compile(r"[0-9a-f]{16,64}")


def artifact_key(prefix: str, sha256: str) -> str:
    """A verified artifact: `artifacts/<sha256>.tar.zst`."""
    if not SHA256.fullmatch(sha256):
        raise BadRequestError(f"not a lowercase sha256 hex digest: {sha256[:80]!r}")
    return f"{prefix}artifacts/{sha256}.tar.zst"


def staging_key(prefix: str, lease_id: str) -> str:
    """One lease's upload before the coordinator has checked its bytes: `staging/<lease id>.tar.zst`."""
    if not LEASE_ID.fullmatch(lease_id):
        raise BadRequestError(f"not a lease id (16-64 lowercase hex characters): {lease_id[:80]!r}")
    return f"{prefix}staging/{lease_id}.tar.zst"


def checkpoint_key(prefix: str, job_id: str, sha256: str) -> str:
    """A job's checkpoint, one key per job and content (`checkpoints/<job id>/<sha256>.tar.zst`), so a new
    checkpoint never overwrites the one a starting attempt may be reading."""
    for what, value in (("job id", job_id), ("sha256", sha256)):
        if not SHA256.fullmatch(value):
            raise BadRequestError(f"checkpoint {what} is not a lowercase sha256 hex digest: {value[:80]!r}")
    return f"{prefix}checkpoints/{job_id}/{sha256}.tar.zst"
