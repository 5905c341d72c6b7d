"""A client of the coordinator for operators and scripts: query and operator verbs over MQTT."""

from __future__ import annotations

import os
import uuid
from typing import Any

from mqfleet import defaults
from mqfleet.errors import BrokerUnavailableError, RemoteError, RequestTimeoutError
from mqfleet.mqtt import BrokerConfig, Connection
from mqfleet.protocol import ROLE_OF_VERB, Role, Topics, Verb


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
            raise
        self._started = True

    def close(self) -> None:
        if self._started:
            self.conn.stop()
            self._started = False

    def call(self, verb: Verb, **fields: Any) -> dict[str, Any]:
        """One request; the reply when ok, else RemoteError with the coordinator's code."""
        self.connect()
        role = ROLE_OF_VERB[verb]
        body: dict[str, Any] = {"request_id": uuid.uuid4().hex, **fields}
        if role is Role.OPERATOR:
            body["token"] = self.token
        topic = self.topics.rpc(role, self.client_id, verb)
        try:
            reply = self.conn.request(topic, body, timeout_s=self.timeout_s)
        except RequestTimeoutError as e:
            raise RequestTimeoutError(
                f"the coordinator did not answer '{verb.value}' within {self.timeout_s:g}s via {self.broker.url}; "
                "is it running, and is --broker right?"
            ) from e
        if not reply.get("ok"):
            raise RemoteError(str(reply.get("error")), str(reply.get("message")), reply)
        return reply

    # conveniences used by the CLI and tests
    def jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every job (optionally of one status), fetched a page at a time."""
        jobs: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            reply = self.call(Verb.JOBS, offset=offset, **({"status": status} if status else {}))
            jobs.extend(reply["jobs"])
            offset = reply.get("next_offset")
        return jobs

    def job(self, ref: str) -> dict[str, Any]:
        return dict(self.call(Verb.JOB, job=ref)["job"])

    def workers(self) -> list[dict[str, Any]]:
        return list(self.call(Verb.WORKERS)["workers"])

    def health(self) -> dict[str, Any]:
        return self.call(Verb.HEALTH)
