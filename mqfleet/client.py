"""A client of the coordinator for operators and scripts: query and operator verbs over MQTT."""

from __future__ import annotations

import fnmatch
import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mqfleet import defaults
from mqfleet.errors import BrokerUnavailableError, RequestTimeoutError
from mqfleet.lifecycle import JobStatus
from mqfleet.mqtt.config import BrokerConfig
from mqfleet.mqtt.connection import Connection
from mqfleet.mqtt.inbox import Handler
from mqfleet.mqtt.rpc import Reply, RpcClient
from mqfleet.wire import verbs
from mqfleet.wire.codec import NoFields
from mqfleet.wire.job_listing import JobOrder, JobRefRequest, JobsReply, JobsRequest
from mqfleet.wire.topics import JsonObject, Topics, Verb
from mqfleet.wire.verbs import Rep, Req, VerbSpec

if TYPE_CHECKING:
    # A method imports the types of its own verb when they are not in the modules above (the query commands'),
    # so `mqfleet health` loads no other verb's messages (docs/BENCHMARKS.md, "CLI start-up").
    from concurrent.futures import Future

    from mqfleet.wire.health import Health
    from mqfleet.wire.hosts import Worker
    from mqfleet.wire.job_detail import ArtifactRecord, JobDetail
    from mqfleet.wire.job_listing import JobRow
    from mqfleet.wire.replies import (
        CompareReply,
        DownloadUrlReply,
        DrainReply,
        GcReply,
        LogsReply,
        ManifestReply,
        ReloadReply,
        RequeuedJob,
        UndrainReply,
    )


class FleetClient:
    """Sends requests to the coordinator and returns its `ok` replies typed (mqfleet/wire/replies.py); raises
    RemoteError otherwise, and BadRequestError naming the field when a reply is not what its verb sends."""

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        prefix: str = defaults.TOPIC_PREFIX,
        token: str | None = None,
        timeout_s: float = defaults.REQUEST_TIMEOUT_S,
        client_id: str | None = None,
    ) -> None:
        self.broker = broker
        self.topics = Topics(prefix)
        self.token = token if token is not None else os.environ.get(defaults.ENV_OPERATOR_TOKEN, "")
        self.timeout_s = timeout_s
        self.client_id = client_id or f"cli-{uuid.uuid4().hex[:12]}"
        self.conn = Connection(broker, client_id=self.client_id, reply_prefix=prefix)
        self.rpc = RpcClient(self.conn, self.topics, self.client_id, token=self.token, timeout_s=timeout_s)
        self._started = False
        #: what `subscribe` asked for, so a connection made again after a failed start has it too
        self._subscriptions: list[tuple[str, Handler, int]] = []

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, wait_s: float | None = None) -> None:
        if self._started:
            return
        try:
            # --timeout bounds the connect too: `health --timeout 0.1` with no broker gives up at once.
            self.conn.start(wait_s=wait_s if wait_s is not None else self.timeout_s)
        except BrokerUnavailableError:
            # A Connection starts once: the next call tries again with a fresh one.
            self.conn = Connection(self.broker, client_id=self.client_id, reply_prefix=self.topics.prefix)
            self.rpc.conn = self.conn
            for topic_filter, handler, qos in self._subscriptions:
                self.conn.subscribe(topic_filter, handler, qos)
            raise
        self._started = True

    def close(self) -> None:
        if self._started:
            self.conn.stop()
            self._started = False

    def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> None:
        """Call `handler` with each message on `topic_filter` (public state, live logs), on the connection's
        dispatcher thread, from the next connect on (at once when connected); kept across reconnects."""
        self._subscriptions.append((topic_filter, handler, qos))
        self.conn.subscribe(topic_filter, handler, qos)

    def call(self, verb: VerbSpec[Req, Rep], request: Req) -> Rep:
        """One request; its `ok` reply typed (fields it does not know are ignored), else RemoteError with the
        coordinator's code."""
        self.connect()
        try:
            return self.rpc.call(verb, request, timeout_s=self.timeout_s)
        except RequestTimeoutError as e:
            raise self._unanswered(verb.verb) from e

    def call_json(self, verb: Verb, **fields: Any) -> Reply:
        """One request with these fields, and its `ok` reply, as JSON (tests send what no typed request holds)."""
        self.connect()
        try:
            return self.rpc.call_json(verb, timeout_s=self.timeout_s, **fields)
        except RequestTimeoutError as e:
            raise self._unanswered(verb) from e

    def _unanswered(self, verb: Verb) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"the coordinator did not answer '{verb.value}' within {self.timeout_s:g}s via {self.broker.url}; "
            "is it running, and is --broker right?"
        )

    # every verb, typed (the CLI, scripts and tests use these)
    def jobs(self, status: str | None = None, *, name: str | None = None) -> list[JsonObject]:
        """Every job (optionally of one status, or whose name matches a glob), oldest first."""
        return list(self.job_listing(status=status, name=name))

    def job_listing(
        self, *, status: str | None = None, name: str | None = None, newest_first: bool = False, limit: int | None = None
    ) -> JobListing:
        """Jobs streamed a page at a time (keyset pages), so a listing of any size holds one page in memory."""
        return JobListing(self, status=JobStatus(status) if status else None, name=name, newest_first=newest_first,
                          limit=limit)

    def logs(self, ref: str, attempt: int | None = None) -> LogsReply:
        """The stored output of one attempt of a job (the latest by default), all pages joined."""
        from mqfleet.wire.replies import LogsReply
        from mqfleet.wire.requests import LogsRequest

        first = self.call(verbs.LOGS, LogsRequest(job=ref, attempt=attempt))
        lines = list(first.lines)
        offset = first.next_offset
        for _ in range(10_000):
            if offset is None or first.attempt is None:
                break
            # Pages are read for the attempt the first reply chose, so a new attempt cannot splice in.
            page = self.call(verbs.LOGS, LogsRequest(job=first.job_id, attempt=first.attempt, offset=offset))
            lines.extend(page.lines)
            offset = page.next_offset
        return LogsReply(job_id=first.job_id, attempt=first.attempt, attempts=first.attempts, lines=lines,
                         total=len(lines))

    def job(self, ref: str) -> JobDetail:
        """One job with its spec, attempts, progress curve, lease, artifact and checkpoint."""
        return self.call(verbs.JOB, JobRefRequest(job=ref)).job

    def workers(self) -> list[Worker]:
        return self.call(verbs.WORKERS, NoFields()).workers

    def health(self) -> Health:
        return self.call(verbs.HEALTH, NoFields())

    def artifacts(self) -> list[ArtifactRecord]:
        return self.call(verbs.ARTIFACTS, NoFields()).artifacts

    def download_url(self, ref: str) -> DownloadUrlReply:
        return self.call(verbs.DOWNLOAD_URL, JobRefRequest(job=ref))

    def compare(self, refs: list[str] | None = None, *, sweep: str | None = None) -> CompareReply:
        """Final metrics of the jobs named, or of a sweep's jobs."""
        from mqfleet.wire.requests import CompareRequest

        if sweep is not None:
            return self.call(verbs.COMPARE, CompareRequest(sweep=sweep))
        return self.call(verbs.COMPARE, CompareRequest(jobs=list(refs or [])))

    def manifest(self) -> ManifestReply:
        return self.call(verbs.MANIFEST, NoFields())

    # operator verbs (they need the operator token)
    def cancel(self, ref: str) -> JobRow:
        return self.call(verbs.CANCEL, JobRefRequest(job=ref)).job

    def requeue(self, ref: str, *, fresh: bool = False) -> RequeuedJob:
        from mqfleet.wire.requests import RequeueRequest

        return self.call(verbs.REQUEUE, RequeueRequest(job=ref, fresh=fresh)).job

    def reload(self, manifest: str | None = None, *, source: str | None = None) -> ReloadReply:
        """Reload the coordinator's manifest file, or apply the TOML text sent (`source` names it)."""
        from mqfleet.wire.requests import SENT_SOURCE, ReloadRequest

        if manifest is None:
            return self.call(verbs.RELOAD, ReloadRequest())
        return self.call(verbs.RELOAD, ReloadRequest(manifest=manifest, source=source or SENT_SOURCE))

    def drain(self, host: str) -> DrainReply:
        from mqfleet.wire.requests import HostRequest

        return self.call(verbs.DRAIN, HostRequest(host=host))

    def undrain(self, host: str) -> UndrainReply:
        from mqfleet.wire.requests import HostRequest

        return self.call(verbs.UNDRAIN, HostRequest(host=host))

    def gc(self, *, dry_run: bool = False) -> GcReply:
        from mqfleet.wire.requests import GcRequest

        return self.call(verbs.GC, GcRequest(dry_run=dry_run))


class JobListing:
    """An iterable over a `jobs` listing that asks the coordinator for one page at a time.

    `total` (jobs the filter matches) is known once the first page arrived.
    Iterating twice asks again. `limit` caps the rows yielded, not the pages.
    """

    def __init__(
        self, client: FleetClient, *, status: JobStatus | None, name: str | None, newest_first: bool, limit: int | None
    ) -> None:
        self.client = client
        self.status, self.name, self.newest_first, self.limit = status, name, newest_first, limit
        self.total: int | None = None

    def __iter__(self) -> Iterator[JsonObject]:
        left = self.limit
        # The next page is asked for while the caller still consumes this one: the coordinator reads
        # and encodes it meanwhile, so a long listing costs about one page's round trip per page.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobs-page") as pool:
            ahead: Future[Reply] | None = pool.submit(self._ask, left, None, 0, True)
            while ahead is not None:
                raw = ahead.result()
                ahead = None
                # its rows are checked to be objects only: they go to the caller as the coordinator sent them
                reply = JobsReply.from_wire(raw)
                if self.total is None:
                    self.total = reply.total or 0
                page = reply.jobs
                if self.name and "next_after" not in raw:
                    # a coordinator from before name filters sends every job: filter here
                    page = [j for j in page if fnmatch.fnmatchcase(str(j.get("name", "")), self.name)]
                page = page[:left]
                if left is not None:
                    left -= len(page)
                if left is None or left > 0:
                    if "next_after" in raw:
                        if reply.next_after is not None:
                            ahead = pool.submit(self._ask, left, reply.next_after, None, False)
                    elif reply.next_offset is not None:
                        # a coordinator from before keyset pages: page by position
                        ahead = pool.submit(self._ask, left, None, reply.next_offset, False)
                yield from page

    def _ask(self, left: int | None, after: int | None, offset: int | None, count: bool) -> Reply:
        """One page, as JSON: whether the reply has `next_after` at all tells an older coordinator."""
        order = JobOrder.NEWEST if self.newest_first else JobOrder.OLDEST
        asked = JobsRequest(status=self.status, name=self.name or None, order=order, limit=left, after=after,
                            offset=offset, count=count)
        return self.client.call_json(Verb.JOBS, **asked.to_wire())
