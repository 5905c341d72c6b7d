"""The coordinator's health checks: the database answers a query, and the artifact store is there.

`health` runs them on every call (the store's at most every few seconds, since it is a
network round trip for S3), and each says what failed in words an operator can act on.
`PRAGMA quick_check` reads the whole file, so it runs once, at start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

from mqfleet import __version__
from mqfleet.coordinator.republish import StateRepublisher
from mqfleet.coordinator.sql.connection import one_row
from mqfleet.coordinator.sql.sqlite import StateFile
from mqfleet.coordinator.tables.catalog import Catalog
from mqfleet.coordinator.tables.hosts import Hosts
from mqfleet.coordinator.tables.manifests import StoredManifest
from mqfleet.errors import ManifestError, StoreError
from mqfleet.manifest.types import Manifest
from mqfleet.store.base import ArtifactStore
from mqfleet.wire.requests import CheckResult, Health, Presence

logger = logging.getLogger(__name__)

#: A store check's result is reused for this long: health may be asked often, and S3 is a round trip away.
STORE_CHECK_CACHE_S = 5.0


class HealthChecks:
    """Runs the database and store checks; the store's result is cached for STORE_CHECK_CACHE_S."""

    def __init__(self, state: StateFile, store: ArtifactStore, *, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.store = store
        self.clock = clock
        self._store_lock = threading.Lock()
        self._store_result: CheckResult | None = None
        self._store_checked_at = -1e18
        #: `PRAGMA quick_check` at start; a damaged file keeps health failing until it is repaired.
        self.quick_check: CheckResult | None = None

    def check_database_file(self) -> CheckResult:
        """PRAGMA quick_check: every page and index readable and consistent (run once, at start)."""
        try:
            found = self.state.quick_check()[:2000]
            ok = found == "ok"
            detail = "quick_check ok" if ok else (f"quick_check found damage in {self.state.path}: {found}; restore "
                                                  "the database from a backup (docs/OPERATIONS.md)")
        except Exception as e:  # a StateStoreError, or the file gone from under us
            ok, detail = False, f"quick_check of {self.state.path} failed: {e}"
        if not ok:
            logger.error("database: %s", detail)
        self.quick_check = CheckResult(ok, detail, self.clock())
        return self.quick_check

    def check_database(self) -> CheckResult:
        """A query that reads the jobs table, and the file still at its path (writes to a removed file are lost)."""
        now = self.clock()
        try:
            with self.state.lock:
                count = one_row(self.state.conn.execute("SELECT COUNT(*) FROM jobs"))[0]
            if self.state.file_path is not None:  # a server (PostgreSQL) has no file of ours to lose
                os.stat(self.state.file_path)
        except FileNotFoundError:
            return CheckResult(False, f"the database file {self.state.path} was removed while in use; every change "
                                      "since is lost at the next restart: stop the coordinator and restore it", now)
        except Exception as e:  # a StateStoreError (busy past the wait, I/O error, disk full, closed), or a bug
            return CheckResult(False, f"query on {self.state.path} failed: {e}", now)
        if self.quick_check is not None and not self.quick_check.ok:
            return CheckResult(False, self.quick_check.detail, now)
        return CheckResult(True, f"{count} jobs readable", now)

    def check_store(self) -> CheckResult:
        """A stat of the store's bucket or folder, reused for STORE_CHECK_CACHE_S."""
        with self._store_lock:
            now = self.clock()
            cached = self._store_result
            if cached is not None and now - self._store_checked_at < STORE_CHECK_CACHE_S:
                return cached
            try:
                self.store.probe()
                result = CheckResult(True, f"{self.store.url} reachable", now)
            except StoreError as e:
                result = CheckResult(False, str(e), now)
            except Exception as e:  # a bug or an SDK error not translated: report it, do not crash health
                logger.exception("store check failed unexpectedly")
                result = CheckResult(False, f"{self.store.url}: check failed: {e}", now)
            if not result.ok and (cached is None or cached.ok):
                logger.warning("store check failed: %s", result.detail)
            self._store_result, self._store_checked_at = result, now
            return result

    def run(self) -> dict[str, CheckResult]:
        return {"database": self.check_database(), "store": self.check_store()}


class HealthSource(Protocol):
    """What the health report reads of the coordinator (the service implements it)."""

    checks: HealthChecks
    catalog: Catalog
    hosts: Hosts
    state: StateFile
    store: ArtifactStore
    started_ts: float
    dropped_requests: int
    refused_log_batches: int
    retained_cleared: int
    manifest_jobs: int
    refused_manifest: ManifestError | None
    republisher: StateRepublisher

    @property
    def lock(self) -> threading.RLock: ...
    @property
    def manifest(self) -> Manifest | None: ...
    @property
    def stored_manifest(self) -> StoredManifest | None: ...


def health_report(coord: HealthSource, now: float) -> Health:
    """The `health` reply and the retained coordinator status. Fields are only ever added (docs/INTERNALS.md)."""
    checks = coord.checks.run()
    counts: dict[str, int] = {}
    online = total = draining = quarantined = 0
    if checks["database"].ok:
        try:
            with coord.lock:
                counts = coord.catalog.counts()
                total, online, draining, quarantined = coord.hosts.counts()
        except Exception as e:  # a StateStoreError between the check and here: health still answers
            checks["database"] = CheckResult(False, f"query on {coord.state.path} failed: {e}", now)
    manifest = coord.manifest
    stored = coord.stored_manifest
    refused = coord.refused_manifest
    return Health(
        state=Presence.ONLINE,
        version=__version__,
        started_ts=coord.started_ts,
        uptime_s=round(now - coord.started_ts, 1),
        manifest=manifest.source if manifest else None,
        manifest_jobs=coord.manifest_jobs if manifest else 0,
        manifest_sha256=stored.sha256 if stored else None,
        manifest_applied_ts=stored.applied_ts if stored else None,
        manifest_origin=stored.origin if stored else None,
        last_refused_manifest=str(refused) if refused else None,
        jobs_by_status=dict(counts),
        hosts_online=online,
        hosts_total=total,
        hosts_draining=draining,
        hosts_quarantined=quarantined,
        db_ok=checks["database"].ok,
        store_ok=checks["store"].ok,
        checks=dict(checks),
        failed_checks=[name for name, result in checks.items() if not result.ok],
        requests_dropped=coord.dropped_requests,
        # retained job states (or an event backlog) still going out in the background (docs/RELIABILITY.md)
        republishing=coord.republisher.is_sweeping(),
        log_batches_refused=coord.refused_log_batches,
        retained_cleared=coord.retained_cleared,
        store=coord.store.url,
        ts=now,
    )
