"""`FleetSource`: the web dashboard's one view of the coordinator, and the only module of mqfleet/web/ that knows it.

Reads run the query verbs' own handlers (coordinator/verbs/) in this process, under the coordinator's lock as the
dispatcher runs them, so a page shows what `mqfleet jobs`, `show`, `workers`, `health`, `logs` and `compare` show;
the web app calls these from its own small thread pool, never from its event loop. Operator actions are signed
operator requests sent over the broker with the operator token, exactly as `mqfleet cancel` sends them: the
coordinator checks and runs them on its request path (signature, replay, one transaction, publish after commit).
Live updates come from the coordinator's `Feed` (coordinator/feed.py).
"""

from __future__ import annotations

import secrets
import threading
from typing import TYPE_CHECKING

from mqfleet.client import FleetClient
from mqfleet.coordinator.verbs.context import Request
from mqfleet.coordinator.verbs.handlers import HANDLERS
from mqfleet.lifecycle import JobStatus
from mqfleet.wire import verbs
from mqfleet.wire.replies import CompareReply, DrainReply, JobDetail, JobsReply, LogsReply, Worker
from mqfleet.wire.requests import (
    CompareRequest,
    Health,
    JobOrder,
    JobRefRequest,
    JobRow,
    JobsRequest,
    LogsRequest,
    NoFields,
)
from mqfleet.wire.topics import Role
from mqfleet.wire.verbs import Rep, Req, VerbSpec

if TYPE_CHECKING:
    from mqfleet.coordinator.feed import Feed
    from mqfleet.coordinator.service import Coordinator



class FleetSource:
    def __init__(self, coordinator: Coordinator) -> None:
        self._coord = coordinator
        self.feed: Feed = coordinator.feed
        self._client: FleetClient | None = None
        self._client_lock = threading.Lock()

    @property
    def operator_token(self) -> str:
        """What a sign-in is checked against ("" when the coordinator has none: nobody can sign in)."""
        return self._coord.operator_token

    def _query(self, verb: VerbSpec[Req, Rep], request: Req) -> Rep:
        coord = self._coord
        req = Request(verb=verb.verb, role=Role.QUERY, client="web", wire=request.to_wire(), body=request,
                      now=coord.clock())
        with coord.lock:  # as the dispatcher runs a query: one consistent read, held only while it reads
            answer = HANDLERS[verb.verb].handler(coord, req)
        assert isinstance(answer, verb.reply), f"{verb.verb.value} answered {type(answer).__name__}"
        return answer

    # --- reads (the query verbs) --------------------------------------------------------------------------------

    def jobs_page(self, *, status: str | None, name: str | None, after: int | None, newest_first: bool, limit: int,
                  count: bool = True) -> JobsReply:
        order = JobOrder.NEWEST if newest_first else JobOrder.OLDEST
        return self._query(verbs.JOBS, JobsRequest(status=JobStatus(status) if status else None, name=name, order=order,
                                                   limit=limit, after=after, count=count))

    def job(self, ref: str) -> JobDetail:
        return self._query(verbs.JOB, JobRefRequest(job=ref)).job

    def workers(self) -> list[Worker]:
        return self._query(verbs.WORKERS, NoFields()).workers

    def health(self) -> Health:
        return self._query(verbs.HEALTH, NoFields())

    def logs(self, ref: str, attempt: int | None, *, offset: int = 0, limit: int | None = None) -> LogsReply:
        return self._query(verbs.LOGS, LogsRequest(job=ref, attempt=attempt, offset=offset, limit=limit))

    def sweep(self, name: str) -> CompareReply:
        return self._query(verbs.COMPARE, CompareRequest(sweep=name))

    def sweep_names(self) -> list[str]:
        """The manifest's [[sweeps]] by name (what `compare --sweep` lists when a name is unknown)."""
        return self._coord.catalog.sweep_names()

    def sweep_members(self, name: str) -> set[str]:
        return set(self._coord.catalog.sweep_jobs(name))

    # --- operator actions (over the bus, signed) ------------------------------------------------------------------

    def _operator(self) -> FleetClient:
        with self._client_lock:
            if self._client is None:
                coord = self._coord
                self._client = FleetClient(coord.config.broker, prefix=coord.config.prefix,
                                           token=coord.operator_token,
                                           client_id=f"web-{coord.config.client_id}-{secrets.token_hex(4)}")
            return self._client

    def cancel(self, ref: str) -> JobRow:
        return self._operator().cancel(ref)

    def requeue(self, ref: str, *, fresh: bool = False) -> JobRow:
        return self._operator().requeue(ref, fresh=fresh)

    def drain(self, host: str, *, draining: bool) -> DrainReply:
        client = self._operator()
        return client.drain(host) if draining else client.undrain(host)

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
