"""The manifests the coordinator applied, kept in its database, and the choice of manifest at start.

`reload --file` sends a manifest that exists nowhere on the coordinator's disk; keeping the
text as applied here is what lets it outlive a restart. The only module that speaks SQL
to the `manifests` table.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from mqfleet.coordinator.sql.sqlite import StateFile
from mqfleet.errors import ManifestError
from mqfleet.manifest.load import parse_manifest, read_manifest_text
from mqfleet.manifest.types import Manifest

logger = logging.getLogger(__name__)

#: Applied manifests kept (the newest, plus the last one read from each file path); the rest are pruned.
MANIFESTS_KEPT = 20

#: How a manifest came to be applied: read from the coordinator's own file, or sent by an operator.
ORIGIN_FILE = "file"
ORIGIN_SENT = "sent"


@dataclass(frozen=True)
class StoredManifest:
    """One applied manifest: its text exactly as applied, where it came from, and when."""

    text: str
    source: str
    sha256: str
    applied_ts: float
    origin: str


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ManifestHistory:
    """The `manifests` table: every applied manifest, newest last; the newest is the one in force."""

    def __init__(self, state: StateFile) -> None:
        self.state = state

    def record(self, text: str, source: str, origin: str, now: float) -> StoredManifest:
        """Remember a manifest as applied; call inside the transaction that applied it."""
        stored = StoredManifest(text=text, source=source, sha256=text_sha256(text), applied_ts=now, origin=origin)
        with self.state.transaction() as c:
            c.execute(
                "INSERT INTO manifests (text, source, sha256, applied_ts, origin) VALUES (?, ?, ?, ?, ?)",
                (stored.text, stored.source, stored.sha256, stored.applied_ts, stored.origin),
            )
            # The last one read from each file path stays whatever its age: the choice at start compares with it.
            c.execute(
                "DELETE FROM manifests WHERE seq <= (SELECT MAX(seq) FROM manifests) - ? AND seq NOT IN "
                "(SELECT MAX(seq) FROM manifests WHERE origin = ? GROUP BY source)",
                (MANIFESTS_KEPT, ORIGIN_FILE),
            )
        return stored

    def in_force(self) -> StoredManifest | None:
        """The manifest applied last, or None before the first."""
        return self._one("SELECT text, source, sha256, applied_ts, origin FROM manifests ORDER BY seq DESC LIMIT 1", ())

    def last_from_file(self, source: str) -> StoredManifest | None:
        """The last manifest applied from the coordinator's own file at this path."""
        return self._one(
            "SELECT text, source, sha256, applied_ts, origin FROM manifests WHERE source = ? AND origin = ? "
            "ORDER BY seq DESC LIMIT 1",
            (source, ORIGIN_FILE),
        )

    def _one(self, sql: str, params: tuple[Any, ...]) -> StoredManifest | None:
        row = self.state.read_one(sql, params)
        if row is None:
            return None
        return StoredManifest(text=row["text"], source=row["source"], sha256=row["sha256"],
                              applied_ts=float(row["applied_ts"]), origin=row["origin"])


@dataclass(frozen=True)
class StartChoice:
    """Which manifest a starting coordinator applies, and the sentence its log gives as the reason."""

    use_file: bool
    why: str


def choose_at_start(path: str, file_text: str | None, in_force: StoredManifest | None,
                    last_from_file: StoredManifest | None) -> StartChoice:
    """The `--manifest` file when it changed since it was last applied from that path; else the one in force.

    `file_text` is None when the file cannot be read. Pure, so each case is a unit test.
    """
    if in_force is None:
        return StartChoice(True, f"no manifest applied before; using {path}")
    if file_text is None:
        return StartChoice(False, f"{path} cannot be read; keeping the manifest in force ({_describe(in_force)})")
    if last_from_file is None:
        return StartChoice(True, f"{path} was never applied before; it replaces the manifest in force "
                                 f"({_describe(in_force)})")
    if text_sha256(file_text) != last_from_file.sha256:
        return StartChoice(True, f"{path} changed on disk since it was applied at {_when(last_from_file)}; "
                                 "the file wins")
    if in_force.sha256 == last_from_file.sha256 and in_force.origin == ORIGIN_FILE:
        return StartChoice(False, f"{path} is unchanged since it was applied at {_when(last_from_file)}")
    return StartChoice(False, f"{path} is unchanged since it was applied at {_when(last_from_file)}; keeping the "
                              f"manifest in force ({_describe(in_force)})")


def _describe(stored: StoredManifest) -> str:
    how = "sent with reload --file" if stored.origin == ORIGIN_SENT else "read from its file"
    return f"{stored.source}, {how} at {_when(stored)}, sha256 {stored.sha256[:12]}"


def _when(stored: StoredManifest) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stored.applied_ts))


@dataclass(frozen=True)
class StartManifest:
    """The manifest a starting coordinator applies: parsed, whether it is new to the history, and why."""

    manifest: Manifest
    is_new: bool
    why: str
    #: The --manifest file's problems when it changed but was refused and the manifest in force was kept.
    refused: ManifestError | None = None


def manifest_at_start(path: str, history: ManifestHistory) -> StartManifest:
    """Choose and parse the manifest to apply at start; ManifestError when there is none to apply."""
    in_force = history.in_force()
    try:
        file_text: str | None = read_manifest_text(path)
    except ManifestError as e:
        if in_force is None:
            raise
        logger.error("manifest %s: %s", path, "; ".join(str(p) for p in e.problems))
        file_text = None
    choice = choose_at_start(path, file_text, in_force, history.last_from_file(path))
    if not choice.use_file and in_force is not None:
        try:
            return StartManifest(parse_manifest(in_force.text, in_force.source), False, choice.why)
        except ManifestError as e:
            # Checked by an older version: this one refuses it (a rule got stricter). The file is all we have.
            if file_text is None:
                raise
            why = f"the manifest in force ({_describe(in_force)}) no longer validates ({e}); using {path}"
            return StartManifest(parse_manifest(file_text, path), True, why)
    assert file_text is not None  # choose_at_start uses the file only when it was read
    try:
        return StartManifest(parse_manifest(file_text, path), True, choice.why)
    except ManifestError as e:
        if in_force is None:
            raise
        why = (f"{path} changed but is refused ({len(e.problems)} problem(s), see `mqfleet health`); keeping "
               f"the manifest in force ({_describe(in_force)})")
        return StartManifest(parse_manifest(in_force.text, in_force.source), False, why, refused=e)
