"""The built-in trainers resume from their checkpoint folder and then write the uninterrupted run's bytes.

Each trainer runs as the agent runs it; the first attempt is killed (SIGKILL, no chance to tidy up) once
it reports a step past the first checkpoints, and a second run on the same checkpoint folder finishes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mqfleet.manifest.builtins import BUILTIN_MODULE
from mqfleet.trainers.demo_data import make_dataset
from tests.integration.test_trainers import DATASET, RUN_TIMEOUT_S, Run, run_trainer, spec_for

#: Long enough (a few seconds on a shared 2-core box) to be killed in the middle.
RESUME_FLAGS = {
    "xgboost": ["--n_estimators", "1000", "--max_depth", "4", "--subsample", "0.8", "--colsample_bytree", "0.8"],
    "torch-mlp": ["--epochs", "60", "--hidden", "32", "--lr", "0.01", "--batch_size", "16", "--dropout", "0.1"],
}
#: The step key of each trainer's progress lines, and the step after which the first run is killed.
STEP = {"xgboost": ("round", 300), "torch-mlp": ("epoch", 15)}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    make_dataset(root / DATASET, rows=600, seed=7)
    return root


def _killed_midway(trainer: str, repo: Path, out_dir: Path, checkpoint_dir: Path) -> int:
    """Run the trainer with a checkpoint folder and SIGKILL it at its first progress line past the kill step."""
    spec_path = out_dir.parent / f"{out_dir.name}.spec.json"
    spec_path.write_text(json.dumps(spec_for(trainer)), encoding="utf-8")
    env = {**os.environ, "MQFLEET_SPEC": str(spec_path), "MQFLEET_OUT_DIR": str(out_dir), "CUDA_VISIBLE_DEVICES": "",
           "MQFLEET_CHECKPOINT_DIR": str(checkpoint_dir)}
    key, kill_after = STEP[trainer]
    proc = subprocess.Popen([sys.executable, "-m", BUILTIN_MODULE[trainer], *RESUME_FLAGS[trainer]], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reached = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("@mqfleet "):
                reached = int(json.loads(line.removeprefix("@mqfleet ")).get(key) or 0)
                if reached >= kill_after:
                    proc.send_signal(signal.SIGKILL)
                    break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(RUN_TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, f"the first run ended on its own ({proc.returncode}) at {key} {reached}"
    return reached


@pytest.mark.parametrize("trainer", sorted(BUILTIN_MODULE))
def test_a_killed_builtin_trainer_resumes_from_its_checkpoint_and_writes_the_uninterrupted_bytes(
    trainer: str, repo: Path, tmp_path: Path
) -> None:
    checkpoint_dir = tmp_path / "checkpoint"
    checkpoint_dir.mkdir()
    reached = _killed_midway(trainer, repo, tmp_path / "killed", checkpoint_dir)
    assert list(checkpoint_dir.iterdir()), "the trainer saved nothing before it was killed"

    env_resumed = {"MQFLEET_CHECKPOINT_DIR": str(checkpoint_dir)}
    resumed = _run(trainer, repo, tmp_path / "resumed", env_resumed)
    uninterrupted = _run(trainer, repo, tmp_path / "uninterrupted", {})
    assert resumed.proc.returncode == 0, resumed.proc.stdout + resumed.proc.stderr
    assert uninterrupted.proc.returncode == 0, uninterrupted.proc.stderr
    key = STEP[trainer][0]
    found = re.search(rf"resumed at {key} (\d+) of", resumed.proc.stdout)
    assert found, resumed.proc.stdout[-2000:]
    step = int(found.group(1))
    total = int(RESUME_FLAGS[trainer][1])
    # From a checkpoint taken before the kill (xgboost saves every tenth of the rounds), never from zero.
    assert 0 < step < total and step <= reached
    assert resumed.files() == uninterrupted.files(), "a resumed run must write the bytes of an uninterrupted one"


def _run(trainer: str, repo: Path, out_dir: Path, extra_env: dict[str, str]) -> Run:
    saved = {k: os.environ.get(k) for k in extra_env}
    os.environ.update(extra_env)
    try:
        return run_trainer(trainer, repo, out_dir, spec_for(trainer), RESUME_FLAGS[trainer])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
