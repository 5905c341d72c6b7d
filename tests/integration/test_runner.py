"""TrainerRun against real trainer processes: output, progress, exit codes, process trees, leftovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mqfleet.agent.command import build_trainer_argv, trainer_env
from mqfleet.agent.progress import parse_progress
from mqfleet.agent.reaper import reap_leftovers, record_run
from mqfleet.agent.runner import TrainerRun
from mqfleet.errors import ConfigurationError
from mqfleet.wire.requests import TrainerRef
from mqfleet.wire.topics import JsonObject
from tests.fixtures.common import wait_until

DATA = Path(__file__).resolve().parent.parent / "data" / "runner"
REPO_ROOT = Path(__file__).resolve().parents[2]
posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX signals and process groups")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")


class Lines:
    """Collects on_line calls; `wait_for` blocks (bounded) until a line appears."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.progress: list[JsonObject] = []
        self._cond = threading.Condition()

    def on_line(self, line: str) -> None:
        with self._cond:
            self.lines.append(line)
            self._cond.notify_all()

    def on_progress(self, progress: JsonObject) -> None:
        self.progress.append(progress)

    def wait_for(self, prefix: str, timeout_s: float = 15.0) -> str:
        with self._cond:
            found = self._cond.wait_for(
                lambda: next((x for x in self.lines if x.startswith(prefix)), None), timeout=timeout_s
            )
        if not found:
            pytest.fail(f"no line starting with {prefix!r} within {timeout_s}s; got {self.lines}")
        return found


def make_run(tmp_path: Path, script: str, *args: str, lines: Lines | None = None, **kw: object) -> TrainerRun:
    out_dir = tmp_path / "out"
    return TrainerRun(
        argv=[sys.executable, str(DATA / script), *args],
        cwd=tmp_path,
        env=trainer_env(tmp_path / "spec.json", out_dir, []),
        out_dir=out_dir,
        on_line=lines.on_line if lines else None,
        on_progress=lines.on_progress if lines else None,
        **kw,  # type: ignore[arg-type]
    )


def is_gone(pid: int) -> bool:
    """Dead: no such process, or a zombie nobody has reaped yet (the container's init may never)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def stray_pids() -> Iterator[list[int]]:
    """Pids a test saw; any still alive at teardown are killed so a failing test leaves nothing behind."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


# -- output and progress -------------------------------------------------------------------------------------


def test_output_lines_reach_on_line_the_log_file_and_the_tail_in_order(tmp_path: Path) -> None:
    lines = Lines()
    log_path = tmp_path / "logs" / "trainer.log"
    run = make_run(tmp_path, "chatty.py", "--lines", "3", lines=lines, log_path=log_path)
    run.start()
    assert run.wait(30) == 0
    assert run.poll() == 0 and run.exit_code == 0
    assert lines.lines[0] == f"cwd={tmp_path}"
    assert lines.lines[1] == f"out_dir={tmp_path / 'out'}"
    assert lines.lines[2:5] == ["line 0", "line 1", "line 2"]
    assert "to stderr" in lines.lines, "stderr is merged into the output"
    assert lines.lines[-1] == "caf\u00e9 \u2713"
    assert log_path.read_text(encoding="utf-8").splitlines() == lines.lines
    assert (tmp_path / "out").is_dir()
    assert run.started_ts is not None and run.ended_ts is not None and run.started_ts <= run.ended_ts


def test_tail_keeps_the_last_lines_but_not_progress_lines(tmp_path: Path) -> None:
    run = make_run(tmp_path, "chatty.py", "--lines", "40", tail_lines=4)
    run.start()
    assert run.wait(30) == 0
    assert run.tail.splitlines() == ["line 39", "@mqfleet {not json", "to stderr", "caf\u00e9 \u2713"]


def test_latest_progress_wins_and_a_bad_progress_line_is_just_a_log_line(tmp_path: Path) -> None:
    lines = Lines()
    run = make_run(tmp_path, "chatty.py", lines=lines)
    run.start()
    assert run.wait(30) == 0
    assert run.latest_progress == {"progress": 1.0, "epoch": 2, "metrics": {"loss": 0.25}}
    assert lines.progress == [{"progress": 0.5, "epoch": 1}, {"progress": 1.0, "epoch": 2, "metrics": {"loss": 0.25}}]
    assert "@mqfleet {not json" in lines.lines
    assert "@mqfleet {not json" in run.tail


def test_parse_progress_accepts_only_a_json_object_after_the_prefix() -> None:
    assert parse_progress('@mqfleet {"progress": 0.4, "loss": 0.31}') == {"progress": 0.4, "loss": 0.31}
    assert parse_progress("@mqfleet [1, 2]") is None
    assert parse_progress('@mqfleetx {"a": 1}') is None
    assert parse_progress('progress @mqfleet {"a": 1}') is None
    assert parse_progress("@mqfleet") is None


def test_a_raising_callback_does_not_stop_the_output_being_read(tmp_path: Path) -> None:
    seen: list[str] = []

    def explode(line: str) -> None:
        seen.append(line)
        raise RuntimeError("callback bug")

    def explode_too(progress: JsonObject) -> None:
        raise RuntimeError("progress callback bug")

    run = make_run(tmp_path, "chatty.py", "--lines", "5")
    run.on_line, run.on_progress = explode, explode_too
    run.start()
    assert run.wait(30) == 0
    assert "line 4" in seen and seen[-1] == "caf\u00e9 \u2713"
    assert run.latest_progress is not None and run.latest_progress["epoch"] == 2


@pytest.mark.parametrize("code", [0, 3])
def test_the_trainers_exit_code_is_reported(tmp_path: Path, code: int) -> None:
    run = make_run(tmp_path, "chatty.py", "--exit", str(code))
    run.start()
    assert run.wait(30) == code
    assert run.terminate() == code, "terminate after exit just returns the code"


def test_wait_times_out_with_none_while_the_trainer_runs(tmp_path: Path) -> None:
    lines = Lines()
    run = make_run(tmp_path, "handles_sigterm.py", lines=lines)
    run.start()
    lines.wait_for("ready")
    assert run.wait(0.2) is None and run.poll() is None
    run.kill()
    assert run.poll() is not None


def test_start_raises_when_the_trainer_program_does_not_exist(tmp_path: Path) -> None:
    run = TrainerRun(argv=["no-such-trainer-binary"], cwd=tmp_path, env=dict(os.environ), out_dir=tmp_path / "o")
    with pytest.raises(FileNotFoundError):
        run.start()
    assert run.pid is None


# -- stopping the tree ---------------------------------------------------------------------------------------


@posix_only
def test_terminate_lets_a_trainer_that_handles_sigterm_save_its_checkpoint(tmp_path: Path) -> None:
    lines = Lines()
    run = make_run(tmp_path, "handles_sigterm.py", lines=lines)
    run.start()
    lines.wait_for("ready")
    t0 = time.monotonic()
    assert run.terminate(grace_s=10) == 143
    assert time.monotonic() - t0 < 5, "a trainer that exits on SIGTERM is not held for the whole grace"
    assert (tmp_path / "out" / "checkpoint.txt").read_text() == "saved\n"
    assert "checkpoint saved" in run.tail


@posix_only
def test_terminate_kills_a_trainer_ignoring_sigterm_and_its_child_after_the_grace(
    tmp_path: Path, stray_pids: list[int]
) -> None:
    lines = Lines()
    run = make_run(tmp_path, "stubborn_tree.py", lines=lines)
    run.start()
    assert run.pid is not None
    stray_pids.append(run.pid)
    child = int(lines.wait_for("child ").split()[1])
    stray_pids.append(child)
    lines.wait_for("ready")
    t0 = time.monotonic()
    code = run.terminate(grace_s=0.5)
    elapsed = time.monotonic() - t0
    assert code == -signal.SIGKILL
    assert 0.5 <= elapsed < 8
    assert is_gone(run.pid)
    wait_until(lambda: is_gone(child), timeout_s=5, what="the trainer's child to die")
    assert run.terminate() == code, "terminate is idempotent"


@posix_only
def test_kill_ends_the_whole_tree_without_a_grace(tmp_path: Path, stray_pids: list[int]) -> None:
    lines = Lines()
    run = make_run(tmp_path, "stubborn_tree.py", lines=lines)
    run.start()
    child = int(lines.wait_for("child ").split()[1])
    stray_pids.append(child)
    t0 = time.monotonic()
    run.kill()
    assert time.monotonic() - t0 < 5
    assert run.exit_code == -signal.SIGKILL
    wait_until(lambda: is_gone(child), timeout_s=5, what="the trainer's child to die")


@posix_only
def test_a_child_left_behind_by_a_trainer_that_exits_is_killed_with_the_job(
    tmp_path: Path, stray_pids: list[int]
) -> None:
    lines = Lines()
    run = make_run(tmp_path, "stubborn_tree.py", "--exit-now", lines=lines)
    run.start()
    assert run.wait(30) == 0
    child = int(lines.wait_for("child ").split()[1])
    stray_pids.append(child)
    wait_until(lambda: is_gone(child), timeout_s=5, what="the orphaned child to be swept")


# -- pidfiles and an agent killed with -9 --------------------------------------------------------------------


def test_the_pidfile_lives_exactly_as_long_as_the_run(tmp_path: Path) -> None:
    lines = Lines()
    pids = tmp_path / "pids"
    run = make_run(tmp_path, "handles_sigterm.py", lines=lines, pidfile_dir=pids)
    run.start()
    lines.wait_for("ready")
    record = json.loads((pids / f"trainer-{run.pid}.json").read_text())
    assert record["pid"] == run.pid
    assert record["create_time"] == pytest.approx(psutil.Process(run.pid).create_time(), abs=1)
    assert record["agent_pid"] == os.getpid()
    assert reap_leftovers(pids) == [], "the runs of a live agent are not leftovers"
    assert psutil.pid_exists(run.pid)
    run.terminate(grace_s=5)
    assert list(pids.iterdir()) == []


@linux_only
def test_a_killed_agent_takes_its_trainer_down_and_reap_leftovers_kills_the_orphaned_child(
    tmp_path: Path, stray_pids: list[int]
) -> None:
    pids = tmp_path / "pids"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    agent = subprocess.Popen(
        [sys.executable, str(DATA / "agent.py"), str(pids), str(tmp_path / "out"), str(DATA / "stubborn_tree.py")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # The agent echoes the trainer's lines and adds its own; it says "agent ready" last.
        seen: dict[str, int] = {}
        assert agent.stdout is not None
        for line in agent.stdout:
            if line.strip() == "agent ready":
                break
            key, _, value = line.strip().partition(" ")
            if value.isdigit():
                seen[key] = int(value)
        assert {"trainer", "child"} <= seen.keys(), seen
        trainer, child = seen["trainer"], seen["child"]
        stray_pids += [trainer, child]
        assert (pids / f"trainer-{trainer}.json").exists()

        agent.kill()
        agent.wait(10)
        wait_until(lambda: is_gone(trainer), timeout_s=5, what="PDEATHSIG to kill the trainer")
        assert not is_gone(child), "PDEATHSIG reaches only the direct child; the grandchild is what reaping is for"

        assert reap_leftovers(pids) == [child]
        assert is_gone(child)
        assert list(pids.iterdir()) == []
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)


def test_reap_leftovers_never_kills_a_process_whose_pid_was_recycled(tmp_path: Path, stray_pids: list[int]) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    # An innocent process that now holds the recorded pid: its create time differs from the record's.
    innocent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    stray_pids.append(innocent.pid)
    try:
        record = {
            "pid": innocent.pid,
            "create_time": psutil.Process(innocent.pid).create_time() - 3600,
            "pgid": innocent.pid,
            "tree": [],
            "agent_pid": 0,
        }
        (pids / f"trainer-{innocent.pid}.json").write_text(json.dumps(record))
        assert reap_leftovers(pids) == []
        assert innocent.poll() is None
        assert list(pids.iterdir()) == [], "a handled record is removed"
    finally:
        innocent.kill()
        innocent.wait(10)


@posix_only
def test_reap_leftovers_kills_a_recorded_tree_whose_agent_is_gone(tmp_path: Path, stray_pids: list[int]) -> None:
    lines = Lines()
    pids = tmp_path / "pids"
    run = make_run(tmp_path, "stubborn_tree.py", lines=lines)
    run.start()
    assert run.pid is not None
    child = int(lines.wait_for("child ").split()[1])
    stray_pids.append(child)
    # Record as if a dead agent had started it: the record outlives its writer.
    path = record_run(pids, run)
    record = json.loads(path.read_text())
    record["agent_pid"], record["tree"] = 0, [[child, psutil.Process(child).create_time()]]
    path.write_text(json.dumps(record))
    try:
        assert sorted(reap_leftovers(pids)) == sorted([run.pid, child])
        assert run.wait(10) == -signal.SIGKILL
        wait_until(lambda: is_gone(child), timeout_s=5, what="the recorded child to die")
    finally:
        run.kill()


def test_an_unreadable_pidfile_is_dropped(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    (pids / "trainer-123.json").write_text("{half")
    assert reap_leftovers(pids) == []
    assert list(pids.iterdir()) == []
    assert reap_leftovers(tmp_path / "missing") == []


# -- argv and environment ------------------------------------------------------------------------------------


def test_a_builtin_trainer_runs_as_a_module_with_sorted_hyper_flags() -> None:
    trainer = TrainerRef(name="gbt", builtin="xgboost", command=[], argv=["{python}", "-m", "mqfleet.trainers.xgboost"])
    spec: JsonObject = {"id": "abc", "hyper": {"n_estimators": 300, "learning_rate": 0.05, "verbose": True, "tag": "x"}}
    assert build_trainer_argv(trainer, spec, python="/py") == [
        "/py",
        "-m",
        "mqfleet.trainers.xgboost",
        "--learning_rate",
        "0.05",
        "--n_estimators",
        "300",
        "--tag",
        "x",
        "--verbose",
        "true",
    ]


def test_a_command_trainer_gets_its_placeholders_replaced() -> None:
    trainer = TrainerRef(name="mine", builtin=None, command=["{python}", "-m", "my.trainer", "--out={out_dir}"])
    spec: JsonObject = {"id": "j1", "hyper": {"flag": False}}
    argv = build_trainer_argv(trainer, spec, python="/venv/bin/python", out_dir=Path("/tmp/o"))
    assert argv == ["/venv/bin/python", "-m", "my.trainer", f"--out={Path('/tmp/o')}", "--flag", "false"]
    assert build_trainer_argv(TrainerRef(name="run", command=["run", "{job_id}"]), {"id": "j2"}) == ["run", "j2"]


def test_a_trainer_without_a_way_to_run_it_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="carries no argv"):
        build_trainer_argv(TrainerRef(name="t", builtin="xgboost"), {"hyper": {}})
    with pytest.raises(ConfigurationError, match="neither"):
        build_trainer_argv(TrainerRef(name="t", builtin=None, command=[]), {"hyper": {}})


def test_trainer_env_sets_the_spec_output_and_gpu_variables_over_the_base_env(tmp_path: Path) -> None:
    env = trainer_env(tmp_path / "spec.json", tmp_path / "out", [0, 2], {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "7"})
    assert env["MQFLEET_SPEC"] == str(tmp_path / "spec.json")
    assert env["MQFLEET_OUT_DIR"] == str(tmp_path / "out")
    assert env["CUDA_VISIBLE_DEVICES"] == "0,2"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"] == "/bin"
    assert trainer_env(tmp_path / "s", tmp_path / "o", [], {})["CUDA_VISIBLE_DEVICES"] == ""
