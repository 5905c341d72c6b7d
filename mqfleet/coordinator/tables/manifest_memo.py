"""What a restart needs of the manifest in force, kept in the state file so an unchanged manifest is not parsed again.

Parsing and applying a manifest of 100,000 jobs takes seconds, and a restarted
coordinator answers nothing until it has its fleet settings (lease length, host
policies, trainers). So each apply also stores the manifest without its jobs
(their rows are the jobs table), keyed by a digest of the file's text and of the
mqfleet version; a start whose file has that digest takes the stored header and
serves at once. Any other file is loaded and applied as before.

The header is pickled: it is a tree of frozen dataclasses written and read only by
this coordinator's own code into its own state file (whoever can write that file
already owns the coordinator), and the version in the key means a header is never
read back by code with different dataclasses.
"""

from __future__ import annotations

import hashlib
import logging
import pickle

from mqfleet import __version__
from mqfleet.coordinator.sql.connection import SqlConnection
from mqfleet.manifest.types import Manifest

logger = logging.getLogger(__name__)


def manifest_digest(text: str, source: str) -> str:
    """The key of a manifest: the sha256 of its text and where it came from, under this mqfleet version."""
    # the format tag changes whenever apply_manifest writes rows an older memo's database lacks
    return hashlib.sha256(f"mqfleet {__version__} rows-3\n{source}\n{text}".encode()).hexdigest()


def remember_manifest(conn: SqlConnection, digest: str, header: Manifest, jobs: int) -> None:
    """Store the manifest just applied (inside the applying transaction)."""
    conn.execute(
        "INSERT INTO manifest_in_force (id, digest, header, jobs) VALUES (1, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET digest = excluded.digest, header = excluded.header, jobs = excluded.jobs",
        (digest, pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL), jobs),
    )


def recall_manifest(conn: SqlConnection, digest: str) -> tuple[Manifest, int] | None:
    """The stored header and job count when the manifest in force has this digest; None otherwise."""
    row = conn.execute("SELECT header, jobs FROM manifest_in_force WHERE id = 1 AND digest = ?", (digest,)).fetchone()
    if row is None:
        return None
    try:
        header = pickle.loads(row[0])  # noqa: S301 - our own state file, version-keyed (module docstring)
    except Exception as e:
        logger.warning("stored manifest header unreadable (%s); the manifest is loaded again", e)
        return None
    if not isinstance(header, Manifest):
        return None
    return header, int(row[1])
