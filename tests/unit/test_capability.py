"""Capability detection on this real host: fields, NVML without a driver, package versions, git state, CLI."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

import mqfleet
from mqfleet.agent import capability
from mqfleet.agent.capability import detect_advert, detect_git
from mqfleet.wire.advert import normalise_arch

REPO_ROOT = Path(__file__).resolve().parents[2]
FIELDS: dict[str, type | tuple[type, ...]] = {
    "host": str,
    "hostname": str,
    "os": str,
    "os_version": str,
    "arch": str,
    "os_family": str,
    "python": str,
    "cpu_cores": int,
    "ram_gib": float,
    "cuda": bool,
    "gpus": list,
    "driver": (str, type(None)),
    "torch": (str, type(None)),
    "xgboost": (str, type(None)),
    "git_commit": (str, type(None)),
    "git_dirty": (bool, type(None)),
    "agent_version": str,
    "slots": int,
    "labels": list,
    "ts": float,
}
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def nvml_works() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def git(repo: Path, *args: str) -> str:
    env = dict(
        os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@e"
    )
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "training-repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text("print('hi')\n")
    git(path, "add", "train.py")
    git(path, "commit", "-q", "-m", "first")
    return path


def test_the_advert_has_exactly_the_contract_fields_with_their_types(tmp_path: Path) -> None:
    before = time.time()
    advert = detect_advert("box-1", slots=2, labels=("fast", "lab"), repo=tmp_path).to_wire()
    assert set(advert) == set(FIELDS)
    for name, kind in FIELDS.items():
        assert isinstance(advert[name], kind), f"{name}={advert[name]!r}"
    assert advert["host"] == "box-1" and advert["slots"] == 2 and advert["labels"] == ["fast", "lab"]
    assert advert["os"] in ("linux", "windows", "darwin")
    assert advert["python"] == ".".join(str(p) for p in sys.version_info[:3])
    assert advert["cpu_cores"] >= 1 and advert["ram_gib"] > 0
    assert advert["ram_gib"] == round(advert["ram_gib"], 1)
    assert advert["agent_version"] == mqfleet.__version__
    assert before <= advert["ts"] <= time.time()
    json.dumps(advert)  # goes on the wire as is


def test_the_advert_names_this_hosts_cpu_architecture_as_uname_does() -> None:
    advert = detect_advert("h").to_wire()
    assert advert["arch"] == normalise_arch(platform.machine())
    if sys.platform.startswith("linux"):
        assert advert["arch"] == os.uname().machine
        assert advert["os_family"] not in ("", "linux") or not Path("/etc/os-release").exists()


@pytest.mark.parametrize(("name", "arch"), [("AMD64", "x86_64"), ("arm64", "aarch64"), ("x86_64", "x86_64"),
                                            ("aarch64", "aarch64"), ("armv7l", "armv7l"), ("i386", "i686")])
def test_architecture_names_of_every_os_are_read_as_linux_names_them(name: str, arch: str) -> None:
    assert normalise_arch(name) == arch


@pytest.mark.parametrize(("release", "family"), [
    ({"ID": "debian"}, "debian"), ({"ID": "ubuntu", "ID_LIKE": "debian"}, "debian"),
    ({"ID": "raspbian", "ID_LIKE": "debian"}, "debian"), ({"ID": "rocky", "ID_LIKE": "rhel centos fedora"}, "rhel"),
    ({"ID": "fedora"}, "fedora"), ({}, "linux"),
])
def test_the_os_family_is_the_distributions_family(release: dict[str, str], family: str) -> None:
    assert capability.os_family(release) == family


def test_every_gpu_entry_has_index_name_uuid_and_vram() -> None:
    advert = detect_advert("h").to_wire()
    assert advert["cuda"] == bool(advert["gpus"])
    for i, gpu in enumerate(advert["gpus"]):
        assert set(gpu) == {"index", "name", "uuid", "vram_gib", "vram_free_gib"} and gpu["index"] == i
        assert gpu["vram_gib"] > 0 and 0 <= gpu["vram_free_gib"] <= gpu["vram_gib"]


def test_a_host_without_an_nvidia_driver_reports_no_cuda_and_no_gpus_instead_of_failing() -> None:
    if nvml_works():
        pytest.skip("this host has a working NVIDIA driver")
    advert = detect_advert("cpu-box").to_wire()
    assert advert["cuda"] is False and advert["gpus"] == [] and advert["driver"] is None


def test_versions_come_from_package_metadata_without_importing_torch_or_xgboost() -> None:
    code = (
        "import json, sys\n"
        "from mqfleet.agent.capability import detect_advert\n"
        "a = detect_advert('h').to_wire()\n"
        "print(json.dumps({'torch': a['torch'], 'xgboost': a['xgboost'],"
        " 'loaded': [m for m in ('torch', 'xgboost', 'numpy') if m in sys.modules]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["loaded"] == []
    for name in ("torch", "xgboost"):
        try:
            expected: str | None = metadata.version(name)
        except metadata.PackageNotFoundError:
            expected = None
        assert result[name] == expected


def test_a_missing_package_has_a_null_version() -> None:
    assert capability.package_version("no-such-distribution-mqfleet") is None


@needs_git
def test_detection_takes_well_under_a_second(repo: Path) -> None:
    detect_advert("warm-up", repo=repo)
    t0 = time.monotonic()
    detect_advert("h", repo=repo)
    assert time.monotonic() - t0 < 1.0


@needs_git
def test_the_git_commit_of_a_repo_is_reported_and_tracked_edits_make_it_dirty(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    advert = detect_advert("h", repo=repo).to_wire()
    assert advert["git_commit"] == head and advert["git_dirty"] is False
    (repo / "notes.txt").write_text("untracked files do not count\n")
    assert detect_git(repo) == (head, False)
    (repo / "train.py").write_text("print('changed')\n")
    assert detect_git(repo) == (head, True)


def test_git_fields_are_null_outside_a_repo_and_without_a_repo(tmp_path: Path) -> None:
    assert detect_git(tmp_path) == (None, None)
    advert = detect_advert("h").to_wire()
    assert advert["git_commit"] is None and advert["git_dirty"] is None


@needs_git
def test_the_commit_is_read_from_the_git_files_when_git_cannot_run(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    head = git(repo, "rev-parse", "HEAD")
    monkeypatch.setenv("PATH", str(repo / "no-bin-here"))
    assert detect_git(repo) == (head, None), "loose ref"
    monkeypatch.undo()
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    monkeypatch.setenv("PATH", str(repo / "no-bin-here"))
    assert detect_git(repo) == (head, None), "packed ref"
    sub = repo / "src" / "pkg"
    sub.mkdir(parents=True)
    assert detect_git(sub) == (head, None), "from a subfolder"


@needs_git
def test_a_repo_without_commits_has_no_commit(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    assert detect_git(tmp_path)[0] is None


@needs_git
def test_capability_command_prints_the_advert_as_json(repo: Path) -> None:
    from mqfleet.cli import capability as capability_cmd  # noqa: F401  (registers the command)
    from mqfleet.cli import cli

    result = CliRunner().invoke(cli, ["capability", "--host-id", "gpu-box", "--repo", str(repo), "--slots", "3"])
    assert result.exit_code == 0, result.output
    advert = json.loads(result.output)
    assert advert["host"] == "gpu-box" and advert["slots"] == 3 and set(advert) == set(FIELDS)
    assert advert["git_commit"] == git(repo, "rev-parse", "HEAD")


def test_python_m_mqfleet_capability_prints_valid_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mqfleet", "capability", "--host-id", "h1", "--repo", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    advert = json.loads(done.stdout)
    assert advert["host"] == "h1" and advert["git_commit"] is None


class FakeNvml:
    """Stands in for pynvml's module on this driverless host, so the GPU path is exercised too."""

    class NVMLError(Exception):
        pass

    def __init__(self, fail_on: str = "") -> None:
        self.fail_on = fail_on
        self.shutdowns = 0

    def _maybe_fail(self, name: str) -> None:
        if name == self.fail_on:
            raise self.NVMLError(name)

    def nvmlInit(self) -> None:
        self._maybe_fail("init")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return b"NVIDIA H200" if handle else "NVIDIA H200"

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle:08d}"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> object:
        self._maybe_fail("memory")
        return type("Memory", (), {"total": 150_754_820_096, "free": 100 * 1024**3 + 5})()


def test_gpu_facts_come_from_nvml_and_nvml_is_always_shut_down(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    cuda, gpus, driver = capability.detect_gpus()
    assert cuda is True and driver == "550.54.15"
    assert [g.to_wire() for g in gpus] == [
        {"index": 0, "name": "NVIDIA H200", "uuid": "GPU-00000000", "vram_gib": 140.4, "vram_free_gib": 100},
        {"index": 1, "name": "NVIDIA H200", "uuid": "GPU-00000001", "vram_gib": 140.4, "vram_free_gib": 100},
    ]
    assert fake.shutdowns == 1


@pytest.mark.parametrize("fail_on", ["init", "memory"])
def test_an_nvml_error_means_no_cuda_never_an_exception(monkeypatch: pytest.MonkeyPatch, fail_on: str) -> None:
    fake = FakeNvml(fail_on=fail_on)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert capability.detect_gpus() == (False, (), None)
    assert fake.shutdowns == (0 if fail_on == "init" else 1), "shut down exactly when init succeeded"
