"""A client of the coordinator for operators and scripts: query and operator verbs over MQTT."""

from __future__ import annotations

import fnmatch
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from mqfleet import defaults
from mqfleet.errors import BrokerUnavailableError, RequestTimeoutError
from mqfleet.mqtt import BrokerConfig, Connection
from mqfleet.protocol import Topics, Verb
from mqfleet.rpc import RpcClient


class FleetClient:
    """Sends requests to the coordinator and returns the `ok` replies; raises RemoteError otherwise."""

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

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, wait_s: float | None = None) -> None:
        if self._started:
            return
        try:
            # A connection is slower than a request (TLS handshake), so it gets at least 5 s.
            self.conn.start(wait_s=wait_s if wait_s is not None else max(self.timeout_s, 5.0))
        except BrokerUnavailableError:
            # A Connection starts once: the next call tries again with a fresh one.
            self.conn = Connection(self.broker, client_id=self.client_id, reply_prefix=self.topics.prefix)
            self.rpc.conn = self.conn
            raise
        self._started = True

    def close(self) -> None:
        if self._started:
            self.conn.stop()
            self._started = False

    def call(self, verb: Verb, **fields: Any) -> dict[str, Any]:
        """One request; the reply when ok, else RemoteError with the coordinator's code."""
        self.connect()
        try:
            return self.rpc.call(verb, timeout_s=self.timeout_s, **fields)
        except RequestTimeoutError as e:
            raise RequestTimeoutError(
                f"the coordinator did not answer '{verb.value}' within {self.timeout_s:g}s via {self.broker.url}; "
                "is it running, and is --broker right?"
            ) from e

    # conveniences used by the CLI and tests
    def jobs(self, status: str | None = None, *, name: str | None = None) -> list[dict[str, Any]]:
        """Every job (optionally of one status, or whose name matches a glob), oldest first."""
        return list(self.job_listing(status=status, name=name))

    def job_listing(
        self, *, status: str | None = None, name: str | None = None, newest_first: bool = False, limit: int | None = None
    ) -> JobListing:
        """Jobs streamed a page at a time (keyset pages), so a listing of any size holds one page in memory."""
        return JobListing(self, status=status, name=name, newest_first=newest_first, limit=limit)

    def logs(self, ref: str, attempt: int | None = None) -> dict[str, Any]:
        """The stored output of one attempt of a job (the latest by default), all pages joined:
        `{job_id, attempt, attempts, lines}`."""
        fields: dict[str, Any] = {"job": ref}
        if attempt is not None:
            fields["attempt"] = attempt
        reply = self.call(Verb.LOGS, **fields)
        lines = list(reply["lines"])
        # Pages are read for the attempt the first reply chose, so a new attempt cannot splice in.
        fields.update(job=reply["job_id"], attempt=reply.get("attempt"))
        offset = reply.get("next_offset")
        for _ in range(10_000):
            if offset is None or fields["attempt"] is None:
                break
            page = self.call(Verb.LOGS, offset=offset, **fields)
            lines.extend(page["lines"])
            offset = page.get("next_offset")
        return {**{k: v for k, v in reply.items() if k not in ("ok", "next_offset", "total")}, "lines": lines}

    def job(self, ref: str) -> dict[str, Any]:
        return dict(self.call(Verb.JOB, job=ref)["job"])

    def workers(self) -> list[dict[str, Any]]:
        return list(self.call(Verb.WORKERS)["workers"])

    def health(self) -> dict[str, Any]:
        return self.call(Verb.HEALTH)


class JobListing:
    """An iterable over a `jobs` listing that asks the coordinator for one page at a time.

    `total` (jobs the filter matches) is known once the first page arrived.
    Iterating twice asks again. `limit` caps the rows yielded, not the pages.
    """

    def __init__(
        self, client: FleetClient, *, status: str | None, name: str | None, newest_first: bool, limit: int | None
    ) -> None:
        self.client = client
        self.status, self.name, self.newest_first, self.limit = status, name, newest_first, limit
        self.total: int | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        fields: dict[str, Any] = {"order": "newest" if self.newest_first else "oldest"}
        if self.status:
            fields["status"] = self.status
        if self.name:
            fields["name"] = self.name
        left = self.limit
        # The next page is asked for while the caller still consumes this one: the coordinator reads
        # and encodes it meanwhile, so a long listing costs about one page's round trip per page.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobs-page") as pool:
            ahead: Future[dict[str, Any]] | None = pool.submit(self._ask, fields, left, None, 0, True)
            while ahead is not None:
                reply = ahead.result()
                ahead = None
                if self.total is None:
                    self.total = int(reply.get("total") or 0)
                page = list(reply.get("jobs") or [])
                if self.name and "next_after" not in reply:
                    # a coordinator from before name filters sends every job: filter here
                    page = [j for j in page if fnmatch.fnmatchcase(str(j.get("name", "")), self.name)]
                page = page[:left]
                if left is not None:
                    left -= len(page)
                if left is None or left > 0:
                    if "next_after" in reply:
                        if reply["next_after"] is not None:
                            ahead = pool.submit(self._ask, fields, left, int(reply["next_after"]), 0, False)
                    elif reply.get("next_offset") is not None:
                        # a coordinator from before keyset pages: page by position
                        ahead = pool.submit(self._ask, fields, left, None, int(reply["next_offset"]), False)
                for job in page:
                    yield dict(job)

    def _ask(self, fields: dict[str, Any], left: int | None, after: int | None, offset: int,
             count: bool) -> dict[str, Any]:
        ask = {**fields, "count": count, **({"after": after} if after is not None else {"offset": offset})}
        if left is not None:
            ask["limit"] = left
        return self.client.call(Verb.JOBS, **ask)
