"""The sweep: lease expiry, retry back-offs ended, request-memory pruning, the retained status and
retention, run by the leader every sweep interval; tests drive `tick(now)` with an injected time."""

from __future__ import annotations

import logging

from mqfleet import defaults
from mqfleet.coordinator.core import CoordinatorCore
from mqfleet.coordinator.verbs.checkpoints import collect_garbage as collect_checkpoint_garbage
from mqfleet.errors import UnavailableError

#: The service's logger: the coordinator's log lines keep one name whichever part writes them.
logger = logging.getLogger("mqfleet.coordinator.service")

#: How often the sweep prunes what is older than [fleet] keep_days.
#: (A tenth of keep_days when that is shorter, so a short retention is kept to closely.)
PRUNE_INTERVAL_S = 300.0
#: How often the retained coordinator status is refreshed.
STATUS_INTERVAL_S = 10.0


class Sweep(CoordinatorCore):
    """The coordinator's sweep (a part of `Coordinator`)."""

    def tick(self, now: float) -> list[str]:
        """Expire leases due at `now`; tests call this with an injected time instead of sleeping."""
        with self.lock:
            self.flush_lines()
            expired = self.leases.expire_leases(now, fleet=self.fleet)  # each one logged there
            self._release_progress(now)
            # A dead host's job is claimable now: wake an idle host instead of waiting for its poll.
            self._nudge_for(self._publish_changes(), "lease expired", now)
            # So is a job whose retry back-off just ended.
            self._nudge_for(self.leases.backoffs_ended(self._last_tick_ts, now), "retry back-off ended", now)
            self._last_tick_ts = max(self._last_tick_ts, now)
            self.republisher.flush()
            if now - self._last_status_ts >= STATUS_INTERVAL_S:
                self.state.prune_replies(now - defaults.REQUEST_MEMORY_S)
                self._publish_status(now)
        self.last_sweep_ts = now
        keep_s = self.fleet.keep_days * 86400.0
        if now - self._last_prune_ts >= min(PRUNE_INTERVAL_S, keep_s / 10):
            self._last_prune_ts = now
            self.prune(now)
        collect_checkpoint_garbage(self, now)
        return expired

    def prune(self, now: float) -> int:
        """Retention: forget events, and logs and progress of jobs ended more than [fleet] keep_days ago.

        Each small batch is its own transaction and takes the lock for a moment only, so requests
        are answered between batches.
        """
        return self.history.prune(now - self.fleet.keep_days * 86400.0)

    def _sweep_loop(self) -> None:
        outage_logged = False
        while not self._stop.wait(self.config.sweep_interval_s):
            try:
                now = self.clock()
                self._lead(now)
                if self.shared:
                    self._follow_manifest()
                if self.is_leader:
                    self.tick(now)
                outage_logged = False
            except UnavailableError as e:
                if not outage_logged:  # once per outage: the sweep runs every second
                    logger.error("sweep skipped, state database unavailable: %s", e)
                    outage_logged = True
            except Exception:
                logger.exception("sweep failed")
