"""Monitoring accounts of the loopback listener: Mosquitto's password file and the mosquitto_sub options file."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from mqfleet.errors import ConfigurationError
from mqfleet.trust.monitor_accounts import accounts_in, hash_password, set_password, write_options
from tests.fixtures.common import require_real_part


def test_the_hash_is_the_one_mosquitto_passwd_writes_for_the_same_salt(tmp_path: Path) -> None:
    require_real_part(shutil.which("mosquitto_passwd") is not None, "mosquitto_passwd (Debian's mosquitto)")
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "monitor", "pa ss:word"], check=True, timeout=30)
    _, _, theirs = passwd.read_text().strip().partition(":")
    _, kind, iterations, salt, _ = theirs.split("$")
    assert kind == "7"
    assert hash_password("pa ss:word", salt=base64.b64decode(salt), iterations=int(iterations)) == theirs


def test_setting_a_password_keeps_the_other_accounts_and_replaces_its_own(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    set_password(passwd, "monitor", "one")
    set_password(passwd, "monitor-bob", "two")
    first = passwd.read_text()
    set_password(passwd, "monitor", "three")
    lines = passwd.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["monitor-bob", "monitor"]
    assert lines[0] in first and lines[1] not in first
    assert passwd.stat().st_mode & 0o777 == 0o640
    assert accounts_in(passwd) == ["monitor-bob", "monitor"]


@pytest.mark.parametrize("name", ["coordinator", "host-a", "operator-alice", "monitorx", "monitor/x", ""])
def test_an_account_that_is_not_a_monitor_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigurationError, match="monitor"):
        set_password(tmp_path / "passwd", name, "pw")


def test_a_password_file_with_another_name_is_refused_for_the_acl(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    set_password(passwd, "monitor", "pw")
    passwd.write_text(passwd.read_text() + "host-a:$7$101$x$y\n")
    with pytest.raises(ConfigurationError, match="'host-a' cannot be loopback accounts"):
        accounts_in(passwd)


def test_the_options_file_holds_the_login_for_mosquitto_sub_and_only_its_group_reads_it(tmp_path: Path) -> None:
    options = write_options(tmp_path / "monitor" / "mosquitto_sub", user="monitor", password="s3cret", port=11883)
    assert [line for line in options.read_text().splitlines() if not line.startswith("#")] == [
        "-h 127.0.0.1", "-p 11883", "-u monitor", "-P s3cret"]
    assert options.stat().st_mode & 0o777 == 0o640
