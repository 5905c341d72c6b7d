"""The one way to ask the coordinator something: `RpcClient`.

It owns the request envelope (a `request_id`, the operator `token` for operator
verbs), the topic (`rpc/{role}/{client}/{verb}`, the role taken from the verb table),
the typed request and reply of each verb (`call`: the verb table's types, so mypy checks both ends),
retries that resend the same request id (so the coordinator runs a request at
most once and answers a redelivery from memory), the reply timeout, and the
turn of an `{"ok": false}` reply into `RemoteError` carrying the coordinator's
error code. The CLI's `FleetClient`, the agent, the benchmarks and the soak all
send through it (docs/INTERNALS.md, "Wire payloads").
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from mqfleet import defaults
from mqfleet.errors import RemoteError, RequestTimeoutError, UnavailableError
from mqfleet.mqtt.connection import Connection
from mqfleet.wire.codec import Wire
from mqfleet.wire.signing import sign_request
from mqfleet.wire.topics import Role, Topics, Verb
from mqfleet.wire.verbs import VERBS, Rep, Req, VerbSpec

logger = logging.getLogger(__name__)

#: Wait before a request the coordinator answered `unavailable` (its database is away) is sent again.
UNAVAILABLE_RETRY_S = 2.0
#: A reply as it came off the wire (decoded JSON, `ok` true or false), checked into typed messages by their from_wire().
Reply = Wire


class RpcClient:
    """Requests from one identity (`client`: an agent's host id, or an operator's client id) on one connection."""

    def __init__(
        self,
        conn: Connection,
        topics: Topics,
        client: str,
        *,
        token: str = "",
        timeout_s: float = defaults.REQUEST_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.conn = conn
        self.topics = topics
        self.client = client
        self.token = token
        self.timeout_s = timeout_s
        #: the time an operator request is signed at (tests give the coordinator's injected clock)
        self.clock = clock

    def envelope(self, verb: Verb, fields: Wire, request_id: str | None = None) -> Wire:
        """The request body: a fresh request id (or the given one), the fields, and for operator verbs an `auth`
        signed with the token; the token itself never crosses the bus (docs/SECURITY.md, "Operator token")."""
        body: Wire = {"request_id": request_id or uuid.uuid4().hex, **fields}
        if VERBS[verb].role is Role.OPERATOR:
            body["auth"] = sign_request(self.token, verb.value, body, self.clock())
        return body

    def send(self, verb: Verb, fields: Wire, *, timeout_s: float | None = None,
             request_id: str | None = None) -> Reply:
        """One request, one wait; the reply as sent, `ok` or not. RequestTimeoutError when none came."""
        topic = self.topics.rpc(VERBS[verb].role, self.client, verb)
        return self.conn.request(topic, self.envelope(verb, fields, request_id), timeout_s=timeout_s or self.timeout_s)

    def call(
        self,
        verb: VerbSpec[Req, Rep],
        request: Req,
        *,
        attempts: int = 1,
        timeout_s: float | None = None,
        keep_trying: Callable[[], bool] = lambda: True,
        retry_unavailable: bool = False,
    ) -> Rep:
        """`request` sent as `verb` (its role, and so its topic, from the verb table, mqfleet/wire/verbs.py), and
        the `ok` reply read as the verb's reply type: BadRequestError names a field the reply lacks or mistypes,
        RemoteError (with the coordinator's code) says it was refused.

        An unanswered request is sent again, with the same request id, up to `attempts` times
        while `keep_trying()` says so; then RequestTimeoutError. With `retry_unavailable`, an
        `unavailable` reply (the coordinator's database is away, so the request did not run;
        docs/RELIABILITY.md) is sent again every UNAVAILABLE_RETRY_S for as long as the
        `attempts` timeouts would have lasted, without using them up.
        """
        reply = self._retried(verb.verb, request.to_wire(), attempts, timeout_s, keep_trying, retry_unavailable)
        return verb.reply.from_wire(reply)

    def call_json(self, verb: Verb, *, attempts: int = 1, timeout_s: float | None = None, **fields: Any) -> Reply:
        """Like call, with the fields and the `ok` reply as JSON: for tests and benchmarks that send what no
        typed request holds."""
        return self._retried(verb, fields, attempts, timeout_s, lambda: True, False)

    def _retried(self, verb: Verb, fields: Wire, attempts: int, timeout_s: float | None, keep_trying: Callable[[], bool],
                 retry_unavailable: bool) -> Reply:
        request_id = uuid.uuid4().hex
        wait_s = timeout_s or self.timeout_s
        deadline = time.monotonic() + max(1, attempts) * wait_s
        attempt = 1
        while True:
            try:
                reply = self.send(verb, fields, timeout_s=wait_s, request_id=request_id)
            except RequestTimeoutError:
                if attempt >= attempts or not keep_trying():
                    raise
                logger.warning("%s not answered (try %d/%d); sending it again", verb.value, attempt, attempts)
                attempt += 1
                continue
            if (retry_unavailable and reply.get("error") == UnavailableError.code
                    and time.monotonic() + UNAVAILABLE_RETRY_S < deadline and keep_trying()):
                logger.warning("%s: coordinator unavailable (%s); sending it again", verb.value, reply.get("message"))
                time.sleep(UNAVAILABLE_RETRY_S)
                continue
            return check_reply(reply)


def check_reply(reply: Reply) -> Reply:
    """The reply when it is `ok`; RemoteError with the coordinator's code and message otherwise."""
    if reply.get("ok") is True:
        return reply
    raise RemoteError(str(reply.get("error")), str(reply.get("message")), reply)
