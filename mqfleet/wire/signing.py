"""Operator requests signed with the operator token, so the token itself never crosses the bus.

An operator verb carries `auth: {ts, mac}` where `mac` is HMAC-SHA256, keyed by the token, of the
canonical JSON of (verb, request id, ts, the body without `auth`). The coordinator recomputes it,
refuses a `ts` further than MAX_SKEW_S from its own clock, and refuses a signature it has already
seen unless it answers from its reply memory (a QoS 1 redelivery gets the same reply, never a second
run). Anyone who can read `rpc/operator/#` learns what was asked, never how to ask
(docs/SECURITY.md, "Operator token").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from typing import Protocol

from mqfleet.errors import UnauthorizedError
from mqfleet.wire.codec import Wire
from mqfleet.wire.topics import encode

#: Largest difference between the operator's clock and the coordinator's a signed request may show.
MAX_SKEW_S = 120.0


def _canonical(verb: str, body: Wire, ts: float) -> bytes:
    unsigned = {k: v for k, v in body.items() if k != "auth"}
    text = json.dumps({"verb": verb, "request_id": unsigned.get("request_id"), "ts": ts, "body": unsigned},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode()


def sign_request(token: str, verb: str, body: Wire, ts: float) -> Wire:
    """The `auth` field for an operator request, as it is encoded into the body: `{ts, mac}`."""
    mac = hmac.new(token.encode(), _canonical(verb, body, ts), hashlib.sha256).hexdigest()
    return {"ts": ts, "mac": mac}


def verify_request(token: str, verb: str, body: Wire, now: float) -> str:
    """The request's mac when it was signed with `token` within MAX_SKEW_S of `now`; else UnauthorizedError."""
    if not token:
        raise UnauthorizedError("operator verbs are disabled: the coordinator was started without an operator token")
    auth = body.get("auth")
    if not isinstance(auth, dict):
        hint = " (the token itself is never accepted on the bus; upgrade the client)" if "token" in body else ""
        raise UnauthorizedError("operator request is not signed; set MQFLEET_OPERATOR_TOKEN to the coordinator's "
                                f"token{hint}")
    ts, mac = auth.get("ts"), auth.get("mac")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or not isinstance(mac, str):
        raise UnauthorizedError("operator request signature is malformed (auth needs a numeric ts and a mac)")
    if abs(now - ts) > MAX_SKEW_S:
        raise UnauthorizedError(f"operator request signed {now - ts:+.0f} s from the coordinator's clock (at most "
                                f"{MAX_SKEW_S:g} s allowed); check both clocks (NTP)")
    try:
        expected = sign_request(token, verb, body, ts)["mac"]
    except ValueError:  # a body json cannot canonicalise (NaN) was not signed by a client of ours
        raise UnauthorizedError("operator request signature does not match") from None
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        raise UnauthorizedError("operator token wrong (the request's signature does not match); set "
                                "MQFLEET_OPERATOR_TOKEN to the coordinator's token")
    return mac


class ReplyMemory(Protocol):
    """The coordinator's request memory (coordinator/sql/sqlite.py): shared by every coordinator on one
    database and kept across restarts, so a replay is refused wherever and whenever it lands."""

    def remembered_reply(self, key: str) -> Wire | None: ...
    def remember_reply(self, key: str, payload: bytes, now: float) -> None: ...


def check_not_replayed(memory: ReplyMemory, mac: str, now: float) -> None:
    """Raise UnauthorizedError if this signature ran before; otherwise note that it runs now.

    Called after the reply memory had no answer for the request itself, so a redelivery of the
    same request is answered from there and never reaches this check.
    """
    key = f"operator-signature/{mac}"
    if memory.remembered_reply(key) is not None:
        raise UnauthorizedError("operator request replayed (its signature was used already); send a new one")
    memory.remember_reply(key, encode({"ts": now}), now)
