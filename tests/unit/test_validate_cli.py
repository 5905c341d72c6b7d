"""`mqfleet validate`, run as the operator runs it: `python -m mqfleet validate FILE` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mqfleet.manifest.load import load_manifest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "manifests"


def validate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqfleet", "validate", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_valid_manifest_exits_0_with_a_summary_of_jobs_sweeps_trainers_and_hosts() -> None:
    result = validate(DATA / "valid.toml")
    assert result.returncode == 0, result.stderr
    assert f"{DATA / 'valid.toml'}: valid" in result.stdout
    assert "7 jobs (4 from 1 sweep), 3 trainers, 1 host" in result.stdout
    assert "torch-mlp" in result.stdout and "box-1" in result.stdout
    assert result.stderr == ""


def test_invalid_manifest_exits_2_with_every_problem_on_stderr_prefixed_by_the_path() -> None:
    path = DATA / "many_problems.toml"
    result = validate(path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 14  # 13 problems and the closing count
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert f"{path}: jobs[1].model: no trainer 'gbx' is declared (did you mean 'gbt'?)" in result.stderr
    assert lines[-1] == f"{path}: invalid, 13 problem(s)"


def test_unknown_key_is_shown_with_its_suggestion() -> None:
    result = validate(DATA / "unknown_key.toml")
    assert result.returncode == 2
    assert "jobs[0].priorty: unknown key (did you mean 'priority'?)" in result.stderr


def test_missing_file_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    result = validate(tmp_path / "absent.toml")
    assert result.returncode == 2
    assert f"no such file: {tmp_path / 'absent.toml'}" in result.stderr


def test_syntax_error_exits_2_naming_the_line() -> None:
    result = validate(DATA / "syntax_error.toml")
    assert result.returncode == 2
    assert "TOML syntax error" in result.stderr and "line 6" in result.stderr


def test_json_output_of_a_valid_manifest_lists_every_job() -> None:
    result = validate(DATA / "valid.toml", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) == {"ok", "problems", "jobs"}
    assert out["ok"] is True and out["problems"] == []
    expected = [job.to_dict() for job in load_manifest(DATA / "valid.toml").jobs]
    assert out["jobs"] == json.loads(json.dumps(expected))
    assert {"id", "name", "model", "mode", "hyper", "after"} <= set(out["jobs"][0])


def test_json_output_of_an_invalid_manifest_lists_every_problem_and_exits_2() -> None:
    result = validate("--json", DATA / "cycle.toml")
    assert result.returncode == 2
    out = json.loads(result.stdout)
    assert out["ok"] is False and out["jobs"] == []
    assert out["problems"] == [
        {
            "place": "jobs[0].after",
            "message": "jobs wait for each other in a cycle: a -> b -> c -> a; remove one of these `after` entries",
        }
    ]
