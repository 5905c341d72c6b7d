"""The owner's switch without an agent: durations and requests checked, the Unix socket's mode and its answer
to the caller the kernel names, a refusal for any other user, and the keyed loopback form Windows uses, which
runs here unchanged (mqfleet/owner/switch.py, mqfleet/agent/owner_socket.py)."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from mqfleet.agent.owner_socket import OwnerSwitch
from mqfleet.owner.switch import (
    KEY_NAME,
    SwitchError,
    ask_agent,
    check_request,
    parse_duration,
    read_key_file,
    write_key_file,
)


@pytest.mark.parametrize(("text", "seconds"), [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("1d", 86400),
                                               ("600", 600), ("0.5h", 1800)])
def test_a_pause_duration_reads_as_its_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "words"), [("-2h", "negative"), ("0", "more than 0"), ("2 weeks", "not a duration"),
                                             ("2h-1m", "not a duration"), ("400d", "longer than a year")])
def test_a_bad_pause_duration_is_refused_with_the_fix(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_duration(text)


def test_the_agent_checks_each_request_itself() -> None:
    assert check_request({"action": "pause", "mode": "now", "for_s": 60}) == {"action": "pause", "mode": "now", "for_s": 60.0}
    assert check_request({"action": "resume", "junk": 1}) == {"action": "resume"}
    for bad, words in (({"action": "pause", "for_s": -5}, "negative"), ({"action": "reboot"}, "unknown action"),
                       ({"action": "pause", "mode": "later"}, "not now or after_current"), ([], "JSON object"),
                       ({"action": "pause", "for_s": True}, "number of seconds")):
        with pytest.raises(ValueError, match=words):
            check_request(bad)


def handler(seen: list[dict[str, Any]]) -> Any:
    def handle(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        return {"host": "h", "state": "paused", "message": "paused by owner"}
    return handle


def test_the_socket_is_0660_and_answers_the_agents_own_user(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    switch = OwnerSwitch(handler(seen), socket_path=tmp_path / "owner.sock")
    switch.start()
    try:
        assert stat.S_IMODE((tmp_path / "owner.sock").stat().st_mode) == 0o660
        reply = ask_agent({"action": "pause", "mode": None, "for_s": 60.0}, socket_path=tmp_path / "owner.sock")
        assert reply == {"ok": True, "host": "h", "state": "paused", "message": "paused by owner"}
        assert seen == [{"action": "pause", "mode": None, "for_s": 60.0}]
        with pytest.raises(SwitchError, match="bad request: a pause cannot last a negative"):
            ask_agent({"action": "pause", "for_s": -1}, socket_path=tmp_path / "owner.sock")
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(str(tmp_path / "owner.sock"))
        raw.sendall(b"{" * 5000 + b"\n")  # past the size bound: an error, and the switch goes on
        assert json.loads(raw.recv(4096))["ok"] is False
        raw.close()
        assert ask_agent({"action": "resume"}, socket_path=tmp_path / "owner.sock")["ok"]
    finally:
        switch.stop()
    assert not (tmp_path / "owner.sock").exists()


def test_a_caller_that_is_not_root_the_agents_user_or_in_the_owner_group_is_told_no(tmp_path: Path) -> None:
    switch = OwnerSwitch(handler([]), socket_path=tmp_path / "owner.sock")
    other = 65534 if os.geteuid() != 65534 else 65533
    refusal = switch._refusal(other)
    assert "may not pause this agent: only root, the agent's own user and (no owner_group is set) may" in refusal
    assert switch._refusal(os.geteuid()) == "" and switch._refusal(0) == ""
    assert "could not tell who is asking" in switch._refusal(None)


def test_a_caller_with_no_agent_listening_is_told_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(SwitchError, match="no agent listens at"):
        ask_agent({"action": "resume"}, socket_path=tmp_path / "none.sock")


def test_the_keyed_loopback_switch_windows_uses_answers_the_key_holder_and_no_one_else(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    switch = OwnerSwitch(handler(seen), socket_path=None, key_dir=tmp_path)
    switch.start()
    try:
        key_file = tmp_path / KEY_NAME
        assert stat.S_IMODE(key_file.stat().st_mode) & 0o007 == 0, "nobody else may read the key"
        assert ask_agent({"action": "resume"}, key_file=key_file)["state"] == "paused"
        assert seen == [{"action": "resume"}]
        address, _ = read_key_file(key_file)
        wrong = tmp_path / "wrong.key"
        write_key_file(wrong, address, b"\0" * 32)
        with pytest.raises(SwitchError):
            ask_agent({"action": "resume"}, key_file=wrong, timeout_s=2)
        assert seen == [{"action": "resume"}], "a caller without the key reached nothing"
        assert ask_agent({"action": "resume"}, key_file=key_file)["ok"], "the switch goes on after a refusal"
    finally:
        switch.stop()


def test_a_work_dir_too_deep_for_a_socket_leaves_the_agent_running_without_the_switch_unless_one_was_asked_for(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "owner.sock"
    default = OwnerSwitch(handler([]), socket_path=deep, required=False)
    default.start()  # warns, and the agent goes on
    assert not deep.exists()
    default.stop()
    from mqfleet.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="longer than the 107 bytes"):
        OwnerSwitch(handler([]), socket_path=deep).start()


def test_agent_pause_loads_none_of_the_agent() -> None:
    """The owner types it on a machine they are using: it must start fast (mqfleet/cli/owner.py)."""
    code = ("import sys\nfrom mqfleet.cli import main\nmain(['agent', 'pause', '--socket', '/nonexistent/owner.sock'])\n"
            "print(sorted(m for m in sys.modules if m.startswith('mqfleet.agent')))")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
    assert "no agent listens at /nonexistent/owner.sock" in done.stderr
