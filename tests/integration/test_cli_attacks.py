"""What a hostile host can put in front of an operator (findings 5 and 7), against the project's mTLS broker.

The host holds its own certificate and writes only where the ACL lets it: its advert, its own job's
failure message and output, its own job's artifact. The operator's CLI must neither crash nor pass
an escape sequence to the terminal, and `fetch` must refuse a decompression bomb leaving nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mqfleet.store.bundle import pack_artifact
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import manifest_text
from tests.fixtures.hostile import HostileHost
from tests.fixtures.tls import OPERATOR, TlsFleet

#: An OSC that retitles the window, a screen clear, an OSC 52 clipboard write, and rich markup.
HOSTILE_TEXT = "\x1b]0;pwned\x07\x1b[2J\x1b]52;c;ZXZpbA==\x07[bold red]linux[/"


def _workers(fleet: TlsFleet) -> dict[str, dict[str, Any]]:
    result = fleet.cli_as(OPERATOR, "workers", "--json")
    assert result.returncode == 0, result.stderr
    return {w["id"]: w for w in json.loads(result.stdout)}


def test_a_hostile_advert_is_refused_the_last_good_one_stays_and_workers_still_renders(tls_fleet: TlsFleet) -> None:
    tls_fleet.write_manifest(manifest_text({"name": "parked", "model": "ok", "allowed_hosts": ["nowhere"]}))
    tls_fleet.start_coordinator()
    host = HostileHost(tls_fleet, advertise=False)
    try:
        host.advert(slots=3)
        wait_until(lambda: _workers(tls_fleet).get("host-b", {}).get("slots") == 3, timeout_s=10)
        host.advert(slots=3, ram_gib="lots", cpu_cores="[bold")
        wait_until(lambda: _workers(tls_fleet)["host-b"].get("advert_error"), timeout_s=10)
        worker = _workers(tls_fleet)["host-b"]
        assert "ram_gib" in worker["advert_error"] or "cpu_cores" in worker["advert_error"]
        assert isinstance(worker["advert"]["ram_gib"], float) and isinstance(worker["advert"]["cpu_cores"], int)
        table = tls_fleet.cli_as(OPERATOR, "workers")
        assert table.returncode == 0, table.stderr
        assert "advert refused" in table.stdout

        # Right types, hostile text: accepted, shown literally, no escape sequence reaches the terminal.
        host.advert(slots=3, os=HOSTILE_TEXT, torch=HOSTILE_TEXT)
        wait_until(lambda: _workers(tls_fleet)["host-b"]["advert"]["os"] == HOSTILE_TEXT, timeout_s=10)
        for command in (("workers",), ("status",), ("watch", "--once")):
            shown = tls_fleet.cli_as(OPERATOR, *command)
            assert shown.returncode == 0, (command, shown.stderr)
            assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout, command
        assert "[bold red]linux" in tls_fleet.cli_as(OPERATOR, "workers").stdout
    finally:
        host.close()


def test_escape_sequences_in_a_hosts_failure_and_output_never_reach_show_or_logs(tls_fleet: TlsFleet) -> None:
    tls_fleet.write_manifest(manifest_text({"name": "b-job", "model": "ok", "allowed_hosts": ["host-b"]},
                                           fleet="[fleet]\nmax_attempts = 1\nlease_s = 30\ngrace_s = 2\n"))
    tls_fleet.start_coordinator()
    host = HostileHost(tls_fleet, advertise=False)
    try:
        host.advert()
        grant = host.claim()
        reply = host.call("fail", job_id=grant["job"]["id"], lease_id=grant["lease_id"], cause="app", exit_code=1,
                          error=HOSTILE_TEXT, output_tail=f"epoch 1\n{HOSTILE_TEXT}\nepoch 2")
        assert reply["ok"], reply
    finally:
        host.close()
    tls_fleet.wait_for_status({"b-job": "failed"}, timeout_s=20)
    for command in (("show", "b-job"), ("jobs",), ("logs", "b-job")):
        shown = tls_fleet.cli_as(OPERATOR, *command)
        assert shown.returncode == 0, (command, shown.stderr)
        assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout, command
    logs = tls_fleet.cli_as(OPERATOR, "logs", "b-job").stdout
    assert "epoch 1" in logs and "[bold red]linux[/" in logs
    raw = tls_fleet.cli_as(OPERATOR, "logs", "b-job", "--raw").stdout
    assert "\x1b]0;pwned\x07" in raw


def test_fetch_refuses_a_zstd_bomb_and_leaves_nothing_in_dir(tls_fleet: TlsFleet, tmp_path: Path) -> None:
    tls_fleet.write_manifest(manifest_text({"name": "b-job", "model": "ok", "allowed_hosts": ["host-b"]}))
    tls_fleet.start_coordinator()
    out = tmp_path / "bomb-src"
    out.mkdir()
    with open(out / "zeros.bin", "wb") as fh:  # sparse: 256 MiB of zeros that take no disk
        fh.truncate(256 * 1024 * 1024)
    bundle = tmp_path / "bomb.tar.zst"
    sha, size = pack_artifact(out, bundle)
    assert size < 64 * 1024, size
    host = HostileHost(tls_fleet, advertise=False)
    try:
        host.advert()
        grant = host.claim()
        lease = {"job_id": grant["job"]["id"], "lease_id": grant["lease_id"]}
        upload = host.call("upload_url", **lease, sha256=sha, size=size)
        host.upload(upload, bundle)
        assert host.call("complete", **lease, sha256=sha, size=size, metrics={})["ok"]
    finally:
        host.close()
    dest = tmp_path / "fetched"
    refused = tls_fleet.cli_as(OPERATOR, "fetch", "b-job", "-o", str(dest), timeout="10")
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert "decompression bomb" in refused.stderr and "nothing was unpacked" in refused.stderr
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "scratch left behind"
    # An existing DIR stays as it was.
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    again = tls_fleet.cli_as(OPERATOR, "fetch", "b-job", "-o", str(dest), "--max-files", "5", timeout="10")
    assert again.returncode == 1
    assert sorted(os.listdir(dest)) == ["keep.txt"]
