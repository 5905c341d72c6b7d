"""The built-in trainers run as the agent runs them: a subprocess in the training repo, spec and output in env."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mqfleet.manifest.builtins import BUILTIN_MODULE
from mqfleet.trainers.demo_data import make_dataset

DATASET = "data/demo.csv"
#: Small settings that still learn the demo problem, so each run takes a few seconds on a shared 2-core box.
QUICK_FLAGS = {
    "xgboost": ["--n_estimators", "30", "--max_depth", "4"],
    "torch-mlp": ["--epochs", "8", "--hidden", "32", "--lr", "0.01"],
}
MODEL_FILE = {"xgboost": "model.xgb.json", "torch-mlp": "model.pt"}
RUN_TIMEOUT_S = 90


@dataclass
class Run:
    proc: subprocess.CompletedProcess[str]
    out_dir: Path

    def progress(self) -> list[dict[str, Any]]:
        lines = [line for line in self.proc.stdout.splitlines() if line.startswith("@mqfleet ")]
        return [json.loads(line.removeprefix("@mqfleet ")) for line in lines]

    def ckpt(self) -> dict[str, Any]:
        return dict(json.loads((self.out_dir / "ckpt.json").read_text(encoding="utf-8")))

    def files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.out_dir.iterdir())}


def spec_for(trainer: str, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "id": f"{trainer}-test",
        "name": f"{trainer}-demo",
        "model": trainer,
        "mode": "realistic",
        "hyper": {},
        "seed": 0,
        "split_recipe": "random",
        "train_hosts": [],
        "dataset": DATASET,
        "target": "failure",
        "group_column": "",
        "attempt": 1,
        "lease_id": "lease-1",
    }
    spec.update(changes)
    return spec


def run_trainer(trainer: str, repo: Path, out_dir: Path, spec: dict[str, Any], flags: list[str]) -> Run:
    """Start the trainer the way the agent does: `python -m MODULE --flags`, cwd the repo, spec and output in env."""
    spec_path = out_dir.parent / f"{out_dir.name}.spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = {**os.environ, "MQFLEET_SPEC": str(spec_path), "MQFLEET_OUT_DIR": str(out_dir), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", BUILTIN_MODULE[trainer], *flags],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    return Run(proc, out_dir)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    make_dataset(root / DATASET, rows=600, seed=7)
    return root


@pytest.fixture(scope="module", params=sorted(BUILTIN_MODULE))
def twice(request: pytest.FixtureRequest, repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Run, Run]:
    """One trainer run twice on the same job, into two different folders."""
    trainer = str(request.param)
    base = tmp_path_factory.mktemp(f"runs-{trainer}")
    first, second = (
        run_trainer(trainer, repo, base / name, spec_for(trainer), QUICK_FLAGS[trainer]) for name in ("first", "second")
    )
    return trainer, first, second


def test_trainer_exits_0_and_writes_model_ckpt_and_report(twice: tuple[str, Run, Run]) -> None:
    trainer, run, _ = twice
    assert run.proc.returncode == 0, run.proc.stderr
    assert set(run.files()) == {MODEL_FILE[trainer], "ckpt.json", "report.json", "report.md"}


def test_ckpt_records_the_job_and_metrics_better_than_the_majority_class(twice: tuple[str, Run, Run]) -> None:
    trainer, run, _ = twice
    ckpt = run.ckpt()
    flag, value = QUICK_FLAGS[trainer][:2]
    assert ckpt["trainer"] == trainer and ckpt["model_file"] == MODEL_FILE[trainer]
    assert ckpt["spec"]["id"] == f"{trainer}-test" and "lease_id" not in ckpt["spec"] and "attempt" not in ckpt["spec"]
    assert ckpt["hyper"][flag.removeprefix("--")] == int(value)  # the flag, over the declared default
    assert ckpt["dataset"]["rows"] == 600 and ckpt["dataset"]["group_column"] == "host"
    assert len(ckpt["dataset"]["sha256"]) == 64
    assert ckpt["task"] == {"kind": "binary", "classes": [0, 1]}
    assert ckpt["device"]["kind"] == "cpu"
    assert {"python", "numpy", "xgboost" if trainer == "xgboost" else "torch"} <= set(ckpt["versions"])
    metrics = ckpt["metrics"]
    assert metrics["n_train"] == 480 and metrics["n_test"] == 120
    assert 0.0 < metrics["logloss"] < 0.69  # better than a coin
    assert metrics["accuracy"] > metrics["baseline_accuracy"]


def test_progress_lines_are_json_rising_to_one_and_the_last_carries_the_metrics(twice: tuple[str, Run, Run]) -> None:
    trainer, run, _ = twice
    progress = run.progress()
    steps = int(QUICK_FLAGS[trainer][1])
    assert len(progress) == steps + 1
    values = [p["progress"] for p in progress]
    assert values == sorted(values) and values[0] > 0.0 and values[-1] == 1.0
    assert all(isinstance(p["loss"], float) for p in progress[:-1])
    assert progress[-1]["metrics"] == run.ckpt()["metrics"]


def test_report_holds_one_loss_per_step_and_no_host_paths(twice: tuple[str, Run, Run], repo: Path) -> None:
    trainer, run, _ = twice
    report = json.loads((run.out_dir / "report.json").read_text(encoding="utf-8"))
    steps = int(QUICK_FLAGS[trainer][1])
    assert len(report["curve"]["train"]) == len(report["curve"]["test"]) == steps
    assert "| metric | value |" in (run.out_dir / "report.md").read_text(encoding="utf-8")
    for name, content in run.files().items():
        assert str(run.out_dir).encode() not in content, name
        assert str(repo).encode() not in content, name


def test_same_job_twice_gives_a_bit_identical_output_folder(twice: tuple[str, Run, Run]) -> None:
    _, first, second = twice
    assert second.proc.returncode == 0, second.proc.stderr
    assert first.files() == second.files()


def test_a_different_seed_gives_a_different_model(twice: tuple[str, Run, Run], repo: Path, tmp_path: Path) -> None:
    trainer, seed0, _ = twice
    seed1 = run_trainer(trainer, repo, tmp_path / "seed1", spec_for(trainer, seed=1), QUICK_FLAGS[trainer])
    assert seed1.proc.returncode == 0, seed1.proc.stderr
    assert seed0.files()[MODEL_FILE[trainer]] != seed1.files()[MODEL_FILE[trainer]]


@pytest.mark.parametrize("trainer", sorted(BUILTIN_MODULE))
def test_missing_target_column_exits_non_zero_naming_the_column(trainer: str, repo: Path, tmp_path: Path) -> None:
    run = run_trainer(trainer, repo, tmp_path / "out", spec_for(trainer, target="breakdown"), QUICK_FLAGS[trainer])
    assert run.proc.returncode == 2
    assert "'breakdown'" in run.proc.stderr
    assert "Traceback" not in run.proc.stderr


@pytest.mark.parametrize("trainer", sorted(BUILTIN_MODULE))
def test_undeclared_flag_exits_2_before_any_training(trainer: str, repo: Path, tmp_path: Path) -> None:
    run = run_trainer(trainer, repo, tmp_path / "out", spec_for(trainer), ["--momentum", "0.9"])
    assert run.proc.returncode == 2
    assert "--momentum" in run.proc.stderr
    assert not run.progress()


def test_xgboost_trains_on_train_hosts_and_evaluates_on_the_other_hosts(repo: Path, tmp_path: Path) -> None:
    spec = spec_for("xgboost", split_recipe="host", train_hosts=["atlas", "boreal", "cirrus", "delta", "ember"])
    run = run_trainer("xgboost", repo, tmp_path / "out", spec, QUICK_FLAGS["xgboost"])
    assert run.proc.returncode == 0, run.proc.stderr
    split = run.ckpt()["split"]
    assert split["recipe"] == "host"
    assert split["test_groups"] == ["fjord", "gale", "halo"]
    assert split["n_train"] + split["n_test"] == 600


@pytest.mark.parametrize("trainer", sorted(BUILTIN_MODULE))
def test_a_target_with_many_values_is_trained_as_regression(trainer: str, repo: Path, tmp_path: Path) -> None:
    run = run_trainer(trainer, repo, tmp_path / "out", spec_for(trainer, target="power_w"), QUICK_FLAGS[trainer])
    assert run.proc.returncode == 0, run.proc.stderr
    ckpt = run.ckpt()
    assert ckpt["task"]["kind"] == "regression"
    assert set(ckpt["metrics"]) == {"rmse", "mae", "n_train", "n_test"}
    assert 0.0 < ckpt["metrics"]["mae"] <= ckpt["metrics"]["rmse"]


def test_sigterm_stops_a_long_training_with_exit_143_and_a_message(repo: Path, tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec_for("xgboost")), encoding="utf-8")
    env = {**os.environ, "MQFLEET_SPEC": str(spec_path), "MQFLEET_OUT_DIR": str(tmp_path / "out"), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", BUILTIN_MODULE["xgboost"], "--n_estimators", "100000", "--max_depth", "2"]
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # pytest-timeout bounds these reads; `finally` kills what is left
        assert first.startswith("xgboost ")
        assert proc.stdout.readline().startswith("@mqfleet ")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 128 + signal.SIGTERM
        assert "stopped by SIGTERM" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_importing_a_trainer_module_loads_neither_torch_nor_xgboost() -> None:
    probe = (
        "import sys, mqfleet.trainers.xgboost, mqfleet.trainers.torch_mlp; "
        "print(sorted(m for m in ('torch', 'xgboost', 'numpy') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
