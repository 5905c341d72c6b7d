"""Finding 9 of the security review, each tried against the project's mTLS broker: what trainers inherit,
big manifests over `reload --file`, payloads and manifests nested too deep, wildcard Response Topics.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from mqfleet import defaults
from mqfleet.mqtt.connection import Connection
from mqfleet.wire.topics import Role
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import OK_TRAINER, ROOT, manifest_text
from tests.fixtures.tls import OPERATOR, T, TlsFleet

ENV_TRAINER = OK_TRAINER + """
[trainers.envdump]
command = ["{python}", "-c", "import json, os, pathlib; d = pathlib.Path(os.environ['MQFLEET_OUT_DIR']); d.mkdir(parents=True, exist_ok=True); (d / 'env.json').write_text(json.dumps(sorted(os.environ)))"]
"""


def test_a_trainer_sees_neither_the_operator_token_nor_store_credentials_nor_tls_keys(
    tls_s3_fleet: TlsFleet, tmp_path: Path
) -> None:
    fleet = tls_s3_fleet
    fleet.write_manifest(manifest_text({"name": "env", "model": "envdump"}, trainers=ENV_TRAINER))
    fleet.base_env["SOME_UNRELATED_SECRET"] = "x"
    fleet.start_coordinator()
    agent_env = {**fleet.base_env, **fleet.pki.env("host-a")}
    assert {"MQFLEET_OPERATOR_TOKEN", "AWS_SECRET_ACCESS_KEY", "MQFLEET_KEY"} <= set(agent_env)
    fleet.start_agent("host-a", extra=("--trainer-env", "GIVEN_ON_PURPOSE=1"))
    fleet.wait_for_status({"env": "completed"}, timeout_s=60)
    fetched = fleet.cli_as(OPERATOR, "fetch", "env", "-o", str(tmp_path / "out"))
    assert fetched.returncode == 0, fetched.stderr
    seen = set(json.loads((tmp_path / "out" / "env.json").read_text()))
    for secret in ("MQFLEET_OPERATOR_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MQFLEET_KEY",
                   "MQFLEET_CERT", "MQFLEET_CA", "MQFLEET_BROKER", "SOME_UNRELATED_SECRET"):
        assert secret not in seen, secret
    assert {"PATH", "MQFLEET_SPEC", "MQFLEET_OUT_DIR", "CUDA_VISIBLE_DEVICES", "GIVEN_ON_PURPOSE"} <= seen


def test_reload_file_takes_a_manifest_up_to_the_documented_2_mib(tls_fleet: TlsFleet, tmp_path: Path) -> None:
    tls_fleet.write_manifest(manifest_text({"name": "a", "model": "ok", "allowed_hosts": ["nowhere"]}))
    tls_fleet.start_coordinator()
    text = manifest_text({"name": "a", "model": "ok", "allowed_hosts": ["nowhere"]},
                         {"name": "b", "model": "ok", "allowed_hosts": ["nowhere"], "seed": 2})
    padding = "# " + "x" * 98 + "\n"
    big = text + padding * ((defaults.MAX_MANIFEST_BYTES - 4096 - len(text)) // len(padding))
    assert 1.9 * 1024 * 1024 < len(big) <= defaults.MAX_MANIFEST_BYTES
    path = tmp_path / "big.toml"
    path.write_text(big)
    reloaded = tls_fleet.cli_as(OPERATOR, "reload", "--file", str(path), "--json", timeout="20")
    assert reloaded.returncode == 0, reloaded.stderr
    assert json.loads(reloaded.stdout)["added"] == 1
    path.write_text(big + padding * 100)
    too_big = tls_fleet.cli_as(OPERATOR, "reload", "--file", str(path), timeout="20")
    assert too_big.returncode == 2 and "limit" in too_big.stderr


def test_json_nested_too_deep_gets_a_bad_payload_reply_and_no_traceback(tls_fleet: TlsFleet) -> None:
    tls_fleet.write_manifest(manifest_text({"name": "a", "model": "ok", "allowed_hosts": ["nowhere"]}))
    coordinator = tls_fleet.start_coordinator()
    conn = Connection(tls_fleet.broker_config(OPERATOR), client_id=f"probe-{uuid.uuid4().hex[:6]}",
                      reply_prefix=T.prefix)
    conn.start(wait_s=10)
    try:
        deep = b'{"request_id": "r1", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        reply = conn.request_raw(T.rpc(Role.QUERY, conn.client_id, "health"), deep, timeout_s=10)
        assert reply["ok"] is False and reply["error"] == "bad_payload", reply
        # A wildcard Response Topic (dropped unanswered) is one log line, not a traceback.
        conn.publish(T.rpc(Role.QUERY, conn.client_id, "health"), b"{}", response_topic=f"{T.reply(conn.client_id)}/#")
        wait_until(lambda: tls_fleet.client().health().requests_dropped >= 1, timeout_s=10)
    finally:
        conn.stop(timeout_s=2)
    assert "Traceback" not in coordinator.log()


def test_validate_of_toml_nested_too_deep_exits_2_with_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    result = subprocess.run([sys.executable, "-m", "mqfleet", "validate", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr[-2000:])
    assert "nested too deeply" in result.stderr and "Traceback" not in result.stderr
