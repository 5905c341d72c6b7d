"""X5 of the third security round (issue 25, item 8): a trainer reading its agent's secrets, on the project's
own mTLS broker config.

The trainer is `tests/data/trainers/snoop.py`: it reads `/proc/<agent>/environ` (which holds the operator
token in these fleets) and the agent's TLS key file, and reports what it got in its artifact. Run as the
agent's own (unprivileged) user, the environment is refused once the agent is non-dumpable, while the key
file stays readable (docs/SECURITY.md, "Trainers", says so); with `--trainer-user` both are refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from mqfleet.wire.topics import Verb
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import FAST_FLEET, RESUMABLE_TRAINER, manifest_text
from tests.fixtures.tls import OPERATOR, TlsFleet
from tests.fixtures.users import OTHER_USER, need_root_and_other_user

SNOOP_TRAINER = """\
[trainers.snoop]
command = ["{python}", "tests/data/trainers/snoop.py"]
outputs = ["report.json"]
[trainers.snoop.hyper]
key = { type = "str" }
"""


def snoop(fleet: TlsFleet, key: Path, tmp_path: Path) -> dict[str, Any]:
    """Run the snoop job to completion and return its report, fetched through the CLI."""
    fleet.wait_for_status({"snoop": "completed"}, timeout_s=60)
    fetched = fleet.cli_as(OPERATOR, "fetch", "snoop", "-o", str(tmp_path / "got"))
    assert fetched.returncode == 0, fetched.stderr
    report: dict[str, Any] = json.loads((tmp_path / "got" / "report.json").read_text())
    return report


def start(fleet: TlsFleet, key: Path) -> None:
    fleet.write_manifest(manifest_text({"name": "snoop", "model": "snoop", "mode": "m", "hyper": {"key": str(key)}},
                                       trainers=SNOOP_TRAINER))
    fleet.start_coordinator()


def test_a_trainer_of_the_agents_own_user_cannot_read_the_agents_environment(
    tls_s3_fleet: TlsFleet, tmp_path: Path, outside_tmp: Path, python_for_other_user: str
) -> None:
    # S3, as a real host has it: an agent of another user than the coordinator cannot write a file:// store
    tls_fleet = tls_s3_fleet
    user = need_root_and_other_user()
    # the agent runs as an unprivileged user with its own copy of its certificate and key, 0600 as installed
    own = outside_tmp / "agent"
    own.mkdir()
    tls = {}
    for name, source in tls_fleet.pki.env("host-a").items():
        copy = own / Path(source).name
        shutil.copyfile(source, copy)
        os.chown(copy, user.pw_uid, user.pw_gid)
        os.chmod(copy, 0o600)
        tls[name] = str(copy)
    os.chown(own, user.pw_uid, user.pw_gid)
    key = Path(tls["MQFLEET_KEY"])
    start(tls_fleet, key)
    agent = tls_fleet.start_agent("host-a", work_dir=own / "work", user=OTHER_USER, tls_env=tls,
                                  python=python_for_other_user)
    report = snoop(tls_fleet, key, tmp_path)
    assert report["uid"] == user.pw_uid and report["agent_pid"] == agent.pid
    assert report["environ"]["read"] is False, report  # the operator token was in there
    assert "Permission" in report["environ"]["error"]
    # what stays true for a same-user trainer, and docs/SECURITY.md says: the key file is the user's own
    assert report["key"]["read"] is True and report["key"]["bytes"] > 0
    # the agent's non-dumpable flag is not inherited: the trainer is dumpable (debuggable, readable by the agent)
    assert report["dumpable"] == 1


def test_a_trainer_run_as_the_trainer_user_reads_neither_the_agents_environment_nor_its_key(
    tls_fleet: TlsFleet, tmp_path: Path, outside_tmp: Path, python_for_other_user: str
) -> None:
    user = need_root_and_other_user()
    key = Path(tls_fleet.pki.env("host-a")["MQFLEET_KEY"])
    start(tls_fleet, key)
    work = outside_tmp / "work"
    tls_fleet.start_agent("host-a", work_dir=work, extra=("--trainer-user", OTHER_USER), python=python_for_other_user)
    report = snoop(tls_fleet, key, tmp_path)
    assert report["uid"] == user.pw_uid, report
    assert report["environ"]["read"] is False and report["environ"]["secrets_seen"] == [], report
    assert report["key"]["read"] is False and report["key"]["bytes"] == 0, report
    assert report["dumpable"] == 1
    # what the trainer user was given: its own job folder, in one only the agent writes and its group enters
    jobs = work / "jobs"
    assert (jobs.stat().st_mode & 0o777, jobs.stat().st_gid) == (0o710, user.pw_gid)
    wait_until(lambda: not any(jobs.iterdir()), timeout_s=10, what="the job's folder to be removed")


def test_the_trainer_users_checkpoint_is_synced_and_resumed_from_through_a_file_store(
    tls_fleet: TlsFleet, outside_tmp: Path, python_for_other_user: str
) -> None:
    # the sync reads the trainer's folder with its rights, the upload writes the store with the agent's; the
    # restore fills the next attempt's folder before the trainer user gets it
    job = {"name": "crashy", "model": "resumable", "mode": "m", "hyper": {"steps": 12, "interval_s": 0.1, "fail_at": 6}}
    tls_fleet.write_manifest(manifest_text(job, fleet=FAST_FLEET + "checkpoint_interval_s = 0.3\n",
                                           trainers=RESUMABLE_TRAINER))
    tls_fleet.start_coordinator()
    tls_fleet.start_agent("host-a", work_dir=outside_tmp / "work", extra=("--trainer-user", OTHER_USER),
                          python=python_for_other_user)
    tls_fleet.wait_for_status({"crashy": "completed"}, timeout_s=90)
    client = tls_fleet.client()
    attempts = client.job("crashy").to_wire()["attempts_detail"]
    assert [a["outcome"] for a in attempts] == ["app", "completed"], attempts
    lines = [str(line) for line in client.call_json(Verb.LOGS, job="crashy")["lines"]]
    assert any("resumed at step 6" in line for line in lines), lines


@pytest.mark.parametrize(("name", "words"), [("root", "is root"), ("no-such-user-x5", "no such user")])
def test_an_unusable_trainer_user_stops_the_agent_at_start_with_the_fix(
    tls_fleet: TlsFleet, outside_tmp: Path, name: str, words: str
) -> None:
    agent = tls_fleet.start_agent("host-a", work_dir=outside_tmp / "work", extra=("--trainer-user", name))
    assert agent.popen.wait(30) == 2
    assert words in agent.log() and "Traceback" not in agent.log()


def test_a_work_dir_the_trainer_user_cannot_reach_stops_the_agent_naming_the_folder(
    tls_fleet: TlsFleet, tmp_path: Path, python_for_other_user: str
) -> None:
    agent = tls_fleet.start_agent("host-a", extra=("--trainer-user", OTHER_USER), python=python_for_other_user)
    assert agent.popen.wait(30) == 2  # its work dir lies in pytest's 0700 tmp tree
    log = agent.log()
    assert f"trainer user {OTHER_USER} cannot pass" in log and "chmod o+x" in log and "Traceback" not in log, log
