"""mqfleet/agent/isolation.py on this real host: the agent's dumpable flag, the trainer user's file rights on
the thread that takes them, a folder handed over, and the checks that stop an agent whose trainer user cannot
reach what it needs. Needs root for what changes users (as in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mqfleet.agent.isolation import TrainerUser, for_agent, trainer_files
from mqfleet.errors import ConfigurationError
from tests.fixtures.users import OTHER_USER, need_root_and_other_user


@pytest.fixture
def user() -> TrainerUser:
    need_root_and_other_user()
    return TrainerUser.resolve(OTHER_USER)


def test_the_agent_made_undumpable_stays_so_and_what_it_runs_is_dumpable_again() -> None:
    code = ("import subprocess, sys; from mqfleet.agent.isolation import is_dumpable, make_undumpable; "
            "before = is_dumpable(); make_undumpable(); "
            "child = subprocess.run([sys.executable, '-c', 'from mqfleet.agent.isolation import is_dumpable; "
            "print(is_dumpable())'], capture_output=True, text=True).stdout.strip(); "
            "print(before, is_dumpable(), child)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "False", "True"], done.stderr


def test_with_the_trainers_rights_a_root_only_file_is_refused_even_through_a_planted_symlink(
    user: TrainerUser, outside_tmp: Path
) -> None:
    os.chmod(outside_tmp, 0o755)  # the way to a job folder is open; the key itself is root's
    key = outside_tmp / "agent.key"
    key.write_text("secret")
    key.chmod(0o600)
    folder = outside_tmp / "job"
    folder.mkdir()
    user.hand_over(folder)
    (folder / "out.bin").symlink_to(key)  # what a trainer would plant
    with trainer_files(user):
        with pytest.raises(PermissionError):
            (folder / "out.bin").read_text()
        (folder / "mine.txt").write_text("x")
    assert (folder / "out.bin").read_text() == "secret"  # the agent's own rights are back
    assert (folder / "mine.txt").stat().st_uid == user.uid  # made with the trainer's rights: its file


def test_the_trainers_rights_are_taken_on_one_thread_only(user: TrainerUser, outside_tmp: Path) -> None:
    key = outside_tmp / "agent.key"
    key.write_text("secret")
    key.chmod(0o600)
    seen: list[str] = []
    entered, leave = threading.Event(), threading.Event()

    def as_trainer() -> None:
        with trainer_files(user):
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=as_trainer)
    thread.start()
    try:
        assert entered.wait(10)
        seen.append(key.read_text())  # this thread keeps root's rights meanwhile
    finally:
        leave.set()
        thread.join(10)
    assert seen == ["secret"]


def test_for_agent_reads_the_file_opened_with_the_trainers_rights_with_the_agents_own(
    user: TrainerUser, outside_tmp: Path
) -> None:
    os.chmod(outside_tmp, 0o755)
    folder = outside_tmp / "job"
    folder.mkdir()
    user.hand_over(folder)
    with trainer_files(user):
        (folder / "bundle").write_bytes(b"packed")
        with for_agent(user, folder / "bundle") as path:
            (folder / "bundle").unlink()  # what is put at the name afterwards does not matter
            store = outside_tmp / "store"
            store.mkdir(mode=0o700)  # the agent's alone, like a file:// store
            (store / "copy").write_bytes(path.read_bytes())
    assert (outside_tmp / "store" / "copy").read_bytes() == b"packed"


def test_a_folder_handed_over_belongs_to_the_trainer_user_all_through(user: TrainerUser, outside_tmp: Path) -> None:
    folder = outside_tmp / "job"
    (folder / "checkpoint" / "deep").mkdir(parents=True)
    (folder / "checkpoint" / "deep" / "state.json").write_text("{}")
    (folder / "spec.json").write_text("{}")
    user.hand_over(folder)
    assert {p.stat().st_uid for p in [folder, *folder.rglob("*")]} == {user.uid}


def test_a_repo_the_trainer_user_cannot_reach_or_read_is_named_with_the_fix(user: TrainerUser, outside_tmp: Path) -> None:
    os.chmod(outside_tmp, 0o755)
    private = outside_tmp / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ConfigurationError, match=f"cannot read {private}.*chmod o\\+rx {private}"):
        user.check_access(private, "/bin/sh")
    private.chmod(0o755)
    assert user.blocked_at(private, read=True) is None
    closed = outside_tmp / "closed"
    closed.mkdir(mode=0o700)
    (closed / "repo").mkdir()
    with pytest.raises(ConfigurationError, match=f"cannot pass {closed}.*chmod o\\+x {closed}"):
        user.check_access(closed / "repo", "/bin/sh")


@pytest.mark.parametrize(("name", "words"), [("root", "is root"), ("0", "is root"), ("no-such-user-x5", "no such user")])
def test_a_trainer_user_that_cannot_be_used_is_refused_with_the_fix(name: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        TrainerUser.resolve(name)
