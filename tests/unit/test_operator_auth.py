"""Signed operator requests: what verifies, what does not, and replays."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from mqfleet.coordinator.sql.postgres import open_state
from mqfleet.errors import UnauthorizedError
from mqfleet.wire.signing import MAX_SKEW_S, check_not_replayed, sign_request, verify_request

T0 = 1_800_000_000.0
BODY = {"request_id": "r1", "job": "train-a"}


def _signed(token: str = "tok", verb: str = "cancel", body: Mapping[str, object] = BODY, ts: float = T0) -> dict[str, object]:
    return {**body, "auth": sign_request(token, verb, dict(body), ts)}


def test_a_request_signed_with_the_token_verifies_and_carries_no_token() -> None:
    body = _signed()
    assert "tok" not in str(body)
    assert verify_request("tok", "cancel", body, T0 + 1) == body["auth"]["mac"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "verb", "now", "said"),
    [
        (_signed(token="other"), "cancel", T0, "token wrong"),
        (_signed(), "requeue", T0, "token wrong"),
        ({**_signed(), "job": "train-b"}, "cancel", T0, "token wrong"),
        ({**_signed(), "request_id": "r2"}, "cancel", T0, "token wrong"),
        (_signed(), "cancel", T0 + MAX_SKEW_S + 1, "clock"),
        (_signed(), "cancel", T0 - MAX_SKEW_S - 1, "clock"),
        ({**BODY, "token": "tok"}, "cancel", T0, "not signed"),
        ({**BODY, "auth": {"ts": "now", "mac": "x"}}, "cancel", T0, "malformed"),
    ],
)
def test_a_wrong_token_verb_body_request_id_time_or_shape_is_refused(body: dict[str, object], verb: str, now: float,
                                                                      said: str) -> None:
    with pytest.raises(UnauthorizedError, match=said):
        verify_request("tok", verb, body, now)


def test_no_token_on_the_coordinator_refuses_every_operator_request() -> None:
    with pytest.raises(UnauthorizedError, match="disabled"):
        verify_request("", "cancel", _signed(), T0)


def test_a_signature_runs_once_on_any_coordinator_sharing_the_state_even_after_a_restart(state_target: str) -> None:
    first = open_state(state_target)
    check_not_replayed(first, "mac-1", T0)
    with pytest.raises(UnauthorizedError, match="replayed"):
        check_not_replayed(first, "mac-1", T0 + 10)
    first.close()
    again = open_state(state_target)  # a restarted (or a second) coordinator on the same state
    with pytest.raises(UnauthorizedError, match="replayed"):
        check_not_replayed(again, "mac-1", T0 + 20)
    check_not_replayed(again, "mac-2", T0 + 20)
    again.close()
