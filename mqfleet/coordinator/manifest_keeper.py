"""The manifest in force: applied (its text kept in the database), refused, or chosen at start
between the --manifest file and the one stored (docs/OPERATIONS.md)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

from mqfleet.coordinator.core import CoordinatorCore
from mqfleet.coordinator.tables.manifest_memo import manifest_digest
from mqfleet.coordinator.tables.manifests import ORIGIN_FILE, choose_at_start, manifest_at_start
from mqfleet.coordinator.tables.rows import ManifestRows, manifest_rows
from mqfleet.errors import ManifestError
from mqfleet.manifest.load import read_manifest_text
from mqfleet.manifest.types import Manifest

#: The service's logger: the coordinator's log lines keep one name whichever part writes them.
logger = logging.getLogger("mqfleet.coordinator.service")


class ManifestInForce(CoordinatorCore):
    """The manifest in force and its choice at start (a part of `Coordinator`)."""

    def apply_manifest(self, manifest: Manifest | ManifestRows, now: float, *, origin: str = ORIGIN_FILE,
                       record: bool = True) -> dict[str, list[str]]:
        """Make a validated manifest the one in force and the jobs table follow it; its text is kept in the
        database (`record`) in the same transaction, so a restart keeps it (docs/OPERATIONS.md).

        Pass `rows.manifest_rows(manifest)`, built off the lock, so that only the writes hold it.
        """
        prepared = manifest if isinstance(manifest, ManifestRows) else manifest_rows(manifest)
        source = prepared.header.source
        with self.lock:
            with self.state.transaction():
                summary = self.catalog.apply_manifest(prepared, now)
                if prepared.header.fleet.cancel_unsatisfiable:
                    # turned on by this manifest: what already waits for ever is cancelled now
                    self.leases.cancel_unsatisfiable(now)
                if record:
                    self.stored_manifest = self.manifests.record(prepared.text, source, origin, now)
            self.manifest = prepared.header
            self.manifest_jobs = len(prepared.rows)
            self.owner_defaults.publish(prepared.header.hosts)
            if summary["changed"] or summary["orphaned"]:
                # Rewritten rows (priority, spec, in_manifest, and the dependents they block) change their
                # retained states without an event: the republisher finds them by digest, after this commit
                # (it waits for the lock). Added jobs go out with their events; an unchanged file costs
                # no walk over every job.
                self.republisher.request_sweep()
        logger.info(
            "manifest %s: %d jobs (%d added, %d orphaned)",
            source, len(prepared.rows), len(summary["added"]), len(summary["orphaned"]),
        )
        return summary

    def refuse_manifest(self, problem: ManifestError) -> None:
        """Remember a manifest refused whole (health reports it); the one in force stays."""
        self.refused_manifest = problem

    def load(self) -> dict[str, list[str]]:
        """Apply the --manifest file if it changed since it was last applied, else keep the manifest in force
        (which may have come from `reload --file`); logs which and why. ManifestError when there is neither."""
        if self._resume_manifest():
            return {"added": [], "kept": [], "changed": [], "orphaned": []}
        chosen = manifest_at_start(str(self.manifest_path), self.manifests)
        logger.info("manifest at start: %s", chosen.why)
        if chosen.refused is not None:
            self.refuse_manifest(chosen.refused)
        if not chosen.is_new:
            self.stored_manifest = self.manifests.in_force()
        prepared, record = manifest_rows(chosen.manifest), chosen.is_new
        del chosen  # the parsed JobSpecs: only their rows are needed now
        summary = self.apply_manifest(prepared, self.clock(), record=record)
        del prepared
        return_freed_memory()
        return summary

    def _resume_manifest(self) -> bool:
        """Keep the manifest in force without parsing it again when the start would keep it anyway and its
        jobs are already the database's: a restart then serves at once (coordinator/tables/manifest_memo.py)."""
        in_force = self.manifests.in_force()
        if in_force is None:
            return False
        path = str(self.manifest_path)
        try:
            file_text: str | None = read_manifest_text(path)
        except ManifestError:
            file_text = None  # manifest_at_start logs it when it matters
        choice = choose_at_start(path, file_text, in_force, self.manifests.last_from_file(path))
        if choice.use_file:
            return False
        recalled = self.catalog.resume_manifest(manifest_digest(in_force.text, in_force.source))
        if recalled is None:
            return False
        self.manifest, self.manifest_jobs = recalled
        self.stored_manifest = in_force
        logger.info("manifest at start: %s; its %d jobs are in the database already, so it is not parsed again",
                    choice.why, self.manifest_jobs)
        return True


def return_freed_memory() -> None:
    """Give the memory a manifest load used back to the system (a Pi has 1-4 GB).

    Parsing 100,000 jobs builds hundreds of MB of objects that are garbage once
    their rows are written; without this the process keeps that peak as its RSS.
    """
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the allocator keeps its own counsel
