"""How much store work one lease can ask of the coordinator: upload URLs at a pace, and reads it has earned.

Every byte the coordinator hashes is a byte some host asked it to read. The store bounds each upload to the
size its URL declared (a POST policy); this bounds how often: a lease gets upload URLs at the pace an honest
agent needs them (a token bucket per lease and kind), each checkpoint URL earns exactly one check of the
object it names, and a lease whose uploads failed their check a few times gets no more checks
(docs/SECURITY.md, "Artifacts"). In memory only: a restart forgets it, which costs an honest agent at
most one checkpoint sync (retried at its next interval).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from mqfleet.errors import RateLimitedError

#: Upload URLs a lease may take at once before the pace applies (a sync's URL, a retry, the final sync).
URL_BURST = 3.0
#: One artifact upload URL per this many seconds past the burst: an agent asks once per attempt.
ARTIFACT_URL_EVERY_S = 60.0
#: Checks of one lease's uploads (artifacts and checkpoints) that may fail, on size or sha256; past this
#: nothing it uploads is read again (an honest agent's uploads never fail their check).
CHECKS_FAILED_MAX = 3
#: Leases remembered at most; past it the one unused longest is forgotten (a fresh allowance if it comes back).
LEASES_REMEMBERED = 20_000
#: Checkpoint contents a lease may hold unchecked; an older one is dropped (its check never comes).
CHECKS_HELD = 8


@dataclass
class _Lease:
    """One lease's allowance: its URL buckets by kind, the checkpoint checks it has earned, its failed checks."""

    tokens: dict[str, tuple[float, float]]  # kind -> (tokens, when counted)
    checks: dict[tuple[str, int], int]  # (sha256, size) -> checks earned
    failed: int


class UploadLimits:
    """Per lease: upload URLs at a pace, one checkpoint check per URL, a cap on failed checks."""

    def __init__(self) -> None:
        self._leases: OrderedDict[str, _Lease] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def _lease(self, lease_id: str) -> _Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            lease = self._leases[lease_id] = _Lease(tokens={}, checks={}, failed=0)
            if len(self._leases) > LEASES_REMEMBERED:
                self._leases.popitem(last=False)
        self._leases.move_to_end(lease_id)
        return lease

    def take_url(self, lease_id: str, kind: str, now: float, *, every_s: float) -> None:
        """Spend one of the lease's `kind` URLs; RateLimitedError when it asked faster than one per `every_s`."""
        with self._lock:
            lease = self._lease(lease_id)
            tokens, counted_ts = lease.tokens.get(kind, (URL_BURST, now))
            tokens = min(URL_BURST, tokens + max(0.0, now - counted_ts) / every_s)
            if tokens < 1.0:
                lease.tokens[kind] = (tokens, now)
                raise RateLimitedError(
                    f"lease {lease_id[:12]} asked for {kind} URLs faster than one per {every_s:g} s "
                    f"(after {URL_BURST:g} at once); the next one in {(1.0 - tokens) * every_s:.0f} s"
                )
            lease.tokens[kind] = (tokens - 1.0, now)

    def earn_check(self, lease_id: str, sha256: str, size: int) -> None:
        """A checkpoint URL was granted for this content: the lease may have it checked once."""
        with self._lock:
            checks = self._lease(lease_id).checks
            checks[(sha256, size)] = checks.pop((sha256, size), 0) + 1
            if len(checks) > CHECKS_HELD:
                del checks[next(iter(checks))]

    def take_check(self, lease_id: str, sha256: str, size: int) -> bool:
        """Spend the check a checkpoint URL earned for this content; False when none is left."""
        with self._lock:
            lease = self._leases.get(lease_id)
            left = lease.checks.get((sha256, size), 0) if lease is not None else 0
            if lease is None or left < 1:
                return False
            if left == 1:
                del lease.checks[(sha256, size)]
            else:
                lease.checks[(sha256, size)] = left - 1
            return True

    def check_reads_allowed(self, lease_id: str) -> None:
        """RateLimitedError when the lease's uploads failed their check too often for another read."""
        with self._lock:
            lease = self._leases.get(lease_id)
            failed = lease.failed if lease is not None else 0
        if failed >= CHECKS_FAILED_MAX:
            raise RateLimitedError(f"lease {lease_id[:12]}: {failed} uploads failed their check; nothing more "
                                   "it uploads is read (the attempt should fail and run again)")

    def note_failed_check(self, lease_id: str) -> None:
        with self._lock:
            self._lease(lease_id).failed += 1
