"""`unpack_artifact` limits: total bytes, entries and compression ratio, each refused with nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqfleet.errors import BundleError
from mqfleet.store.bundle import UnpackLimits, pack_artifact, unpack_artifact


def _bundle(tmp_path: Path, files: dict[str, bytes | int]) -> tuple[Path, str]:
    src = tmp_path / "src"
    src.mkdir()
    for name, content in files.items():
        with open(src / name, "wb") as fh:
            if isinstance(content, int):
                fh.truncate(content)  # sparse zeros
            else:
                fh.write(content)
    sha, _ = pack_artifact(src, tmp_path / "b.tar.zst")
    return tmp_path / "b.tar.zst", sha


@pytest.mark.parametrize(
    ("limits", "said"),
    [
        (UnpackLimits(max_ratio=50), "times its compressed size"),
        (UnpackLimits(max_bytes=1024 * 1024), "more than 1048576 bytes"),
        (UnpackLimits(max_files=2, max_ratio=1e6), "entries"),
    ],
)
def test_an_archive_past_a_limit_is_refused_and_dest_is_left_as_it_was(tmp_path: Path, limits: UnpackLimits,
                                                                          said: str) -> None:
    bundle, sha = _bundle(tmp_path, {"a.bin": 64 * 1024 * 1024, "b.txt": b"b", "c.txt": b"c"})
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "mine").write_text("kept")
    with pytest.raises(BundleError, match=said):
        unpack_artifact(bundle, dest, expected_sha256=sha, limits=limits)
    assert [p.name for p in dest.iterdir()] == ["mine"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_raised_limits_unpack_the_same_archive(tmp_path: Path) -> None:
    bundle, sha = _bundle(tmp_path, {"a.bin": 8 * 1024 * 1024, "b.txt": b"b"})
    unpack_artifact(bundle, tmp_path / "out", expected_sha256=sha, limits=UnpackLimits(max_ratio=1e6))
    assert (tmp_path / "out" / "a.bin").stat().st_size == 8 * 1024 * 1024


def test_the_default_limits_unpack_an_ordinary_artifact(tmp_path: Path) -> None:
    bundle, sha = _bundle(tmp_path, {"model.bin": bytes(range(256)) * 4096, "metrics.json": b'{"acc": 0.9}'})
    unpack_artifact(bundle, tmp_path / "out", expected_sha256=sha)
    assert (tmp_path / "out" / "metrics.json").read_bytes() == b'{"acc": 0.9}'
