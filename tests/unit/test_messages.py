"""The typed agent messages: strict on the fields they know, tolerant of fields they do not."""

from __future__ import annotations

from typing import Any

import pytest

from mqfleet.errors import BadRequestError
from mqfleet.messages import ClaimReply, FailRequest, Grant, RenewReply, UploadUrlReply

GRANT: dict[str, Any] = {
    "job": {"id": "j" * 64, "name": "gbt-1", "status": "claimed", "host": "h1", "attempts": 0, "in_manifest": True},
    "spec": {"id": "j" * 64, "hyper": {"n_estimators": 10}},
    "trainer": {"name": "gbt", "builtin": "xgboost", "command": [], "argv": ["{python}", "-m", "mqfleet.trainers.xgboost"],
                "hyper": {}, "outputs": ["model.xgb.json"]},
    "lease_id": "l" * 32, "attempt": 1, "expires_ts": 1_800_000_090, "lease_s": 90, "gpus": [0],
}


def test_a_grant_reads_back_typed_and_writes_the_same_json() -> None:
    grant = Grant.from_wire(GRANT)
    assert (grant.job.status, grant.trainer.argv[1], grant.expires_ts, grant.gpus) == ("claimed", "-m", 1_800_000_090.0, [0])
    wire = grant.to_wire()
    assert {k: wire[k] for k in GRANT if k not in ("job", "trainer")} == {k: v for k, v in GRANT.items() if k not in ("job", "trainer")}
    assert Grant.from_wire(wire) == grant


def test_fields_a_newer_coordinator_adds_are_ignored() -> None:
    newer = {**GRANT, "deadline_ts": 5.0, "trainer": {**GRANT["trainer"], "env": {"X": "1"}}}
    assert Grant.from_wire(newer) == Grant.from_wire(GRANT)


@pytest.mark.parametrize(("change", "named"), [
    ({"lease_id": 7}, "field 'job.lease_id' must be a string"),
    ({"attempt": True}, "field 'job.attempt' must be an integer"),
    ({"gpus": ["0"]}, "field 'job.gpus[0]' must be an integer"),
    ({"trainer": {"name": "gbt", "argv": "python -m x"}}, "field 'job.trainer.argv' must be a list"),
    ({"job": {"id": "x", "name": "y"}}, "field 'job.job.status' is missing"),
    ({"expires_ts": float("nan")}, "field 'job.expires_ts' must be a finite number"),
])
def test_a_wrong_type_or_a_missing_field_is_a_bad_request_naming_it(change: dict[str, Any], named: str) -> None:
    with pytest.raises(BadRequestError, match=named.replace("[", r"\[").replace("]", r"\]")):
        ClaimReply.from_wire({"ok": True, "job": {**GRANT, **change}})


def test_optional_fields_take_null_and_defaults() -> None:
    assert ClaimReply.from_wire({"ok": True, "job": None}).job is None
    assert UploadUrlReply.from_wire({"ok": True, "exists": True, "key": "k"}).url is None
    assert FailRequest.from_wire({"job_id": "j", "lease_id": "l", "cause": "app"}).exit_code is None
    with pytest.raises(BadRequestError, match="field 'expires_ts' is missing"):
        RenewReply.from_wire({"ok": True})
    with pytest.raises(BadRequestError, match="must be a JSON object"):
        RenewReply.from_wire([1])
