"""Bundles: deterministic bytes, faithful round trips, one-pass hashing, safe unpacking, flat memory."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from mqfleet.errors import ArtifactMismatchError, BundleError
from mqfleet.store.bundle import hash_file, pack_artifact, unpack_artifact

FILES = {
    "model.json": b'{"trees": 3}',
    "weights/layer0.bin": os.urandom(50_000),
    "weights/layer1.bin": b"\x00" * 100_000,
    "metrics.csv": b"epoch,loss\n1,0.5\n",
    "empty.txt": b"",
    "n\u00e4me with spaces.txt": b"unicode",
}


def _make_tree(root: Path, order: list[str], mtime: float, mode: int) -> Path:
    for name in order:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(FILES[name])
        path.chmod(mode)
        os.utime(path, (mtime, mtime))
    (root / "checkpoints").mkdir(exist_ok=True)
    os.utime(root / "checkpoints", (mtime, mtime))
    return root


def _tree(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def _zst_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    return info, data


def test_same_files_with_other_mtimes_modes_and_creation_order_pack_to_the_same_bytes(tmp_path: Path) -> None:
    names = sorted(FILES)
    a = _make_tree(tmp_path / "a", names, mtime=1_000_000, mode=0o644)
    b = _make_tree(tmp_path / "b", list(reversed(names)), mtime=1_700_000_000, mode=0o600)
    sha_a, size_a = pack_artifact(a, tmp_path / "a.tar.zst")
    sha_b, size_b = pack_artifact(b, tmp_path / "b.tar.zst")
    assert (sha_a, size_a) == (sha_b, size_b)
    assert (tmp_path / "a.tar.zst").read_bytes() == (tmp_path / "b.tar.zst").read_bytes()


def test_changing_one_byte_of_one_file_changes_the_sha256(tmp_path: Path) -> None:
    a = _make_tree(tmp_path / "a", sorted(FILES), mtime=0, mode=0o644)
    sha_before, _ = pack_artifact(a, tmp_path / "1.tar.zst")
    (a / "metrics.csv").write_bytes(b"epoch,loss\n1,0.6\n")
    sha_after, _ = pack_artifact(a, tmp_path / "2.tar.zst")
    assert sha_before != sha_after


def test_archive_entries_are_sorted_with_zeroed_owner_and_time_and_normalised_modes(tmp_path: Path) -> None:
    src = _make_tree(tmp_path / "src", sorted(FILES), mtime=1_234_567, mode=0o600)
    (src / "train.sh").write_bytes(b"#!/bin/sh\n")
    (src / "train.sh").chmod(0o700)
    pack_artifact(src, tmp_path / "o.tar.zst")
    with zstandard.ZstdDecompressor().stream_reader(open(tmp_path / "o.tar.zst", "rb")) as zst, tarfile.open(
        fileobj=zst, mode="r|"
    ) as tar:
        members = list(tar)
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {"checkpoints", "weights", "weights/layer0.bin", "train.sh"} <= set(names)
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.isdir() or m.isreg()
    modes = {m.name: m.mode for m in members}
    assert modes["train.sh"] == 0o755 and modes["model.json"] == 0o644 and modes["weights"] == 0o755


def test_the_returned_sha256_and_size_are_those_of_the_written_file(tmp_path: Path) -> None:
    src = _make_tree(tmp_path / "src", sorted(FILES), mtime=0, mode=0o644)
    result = pack_artifact(src, tmp_path / "o.tar.zst")
    assert result == hash_file(tmp_path / "o.tar.zst")
    assert result[1] == (tmp_path / "o.tar.zst").stat().st_size


def test_unpack_restores_every_file_directory_and_executable_bit(tmp_path: Path) -> None:
    src = _make_tree(tmp_path / "src", sorted(FILES), mtime=0, mode=0o644)
    (src / "run").write_bytes(b"#!/bin/sh\n")
    (src / "run").chmod(0o755)
    sha, _ = pack_artifact(src, tmp_path / "o.tar.zst")
    unpack_artifact(tmp_path / "o.tar.zst", tmp_path / "out", expected_sha256=sha)
    assert _tree(tmp_path / "out") == _tree(src)
    assert os.access(tmp_path / "out" / "run", os.X_OK)
    assert not os.access(tmp_path / "out" / "model.json", os.X_OK)


def test_packing_an_empty_folder_gives_a_bundle_that_unpacks_to_nothing(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    sha, _ = pack_artifact(tmp_path / "src", tmp_path / "o.tar.zst")
    unpack_artifact(tmp_path / "o.tar.zst", tmp_path / "out", expected_sha256=sha)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_symlink_in_the_output_is_refused_and_no_bundle_is_left(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "real.bin").write_bytes(b"data")
    (src / "link.bin").symlink_to(src / "real.bin")
    with pytest.raises(BundleError, match="symlink"):
        pack_artifact(src, tmp_path / "o.tar.zst")
    assert not (tmp_path / "o.tar.zst").exists()


def test_a_bundle_cannot_be_written_inside_the_folder_it_packs(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(BundleError):
        pack_artifact(tmp_path / "src", tmp_path / "src" / "o.tar.zst")


@pytest.mark.parametrize(
    "member",
    [
        _member("../escaped.txt"),
        _member("ok/../../escaped.txt"),
        _member("/tmp/absolute.txt"),
        _member("C:\\windows.txt"),
        _member("link", tarfile.SYMTYPE, link="/etc/passwd"),
        _member("hard", tarfile.LNKTYPE, link="../outside"),
        _member("fifo", tarfile.FIFOTYPE),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "windows-drive", "symlink", "hardlink", "fifo"],
)
def test_unpack_refuses_members_that_leave_the_destination_or_are_not_plain(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes]
) -> None:
    bundle = _zst_tar(tmp_path / "evil.tar.zst", [_member("fine.txt"), member])
    dest = tmp_path / "box" / "out"
    with pytest.raises(BundleError):
        unpack_artifact(bundle, dest)
    assert list(dest.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["out"]
    assert not (tmp_path / "escaped.txt").exists()


def test_a_wrong_expected_sha256_is_refused_before_anything_lands_in_the_destination(tmp_path: Path) -> None:
    src = _make_tree(tmp_path / "src", sorted(FILES), mtime=0, mode=0o644)
    pack_artifact(src, tmp_path / "o.tar.zst")
    with pytest.raises(ArtifactMismatchError):
        unpack_artifact(tmp_path / "o.tar.zst", tmp_path / "out", expected_sha256="0" * 64)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_corrupted_bundle_is_reported_as_a_mismatch_when_the_sha256_is_known(tmp_path: Path) -> None:
    src = _make_tree(tmp_path / "src", sorted(FILES), mtime=0, mode=0o644)
    sha, size = pack_artifact(src, tmp_path / "o.tar.zst")
    data = bytearray((tmp_path / "o.tar.zst").read_bytes())
    data[size // 2] ^= 0xFF
    (tmp_path / "o.tar.zst").write_bytes(bytes(data))
    with pytest.raises(ArtifactMismatchError):
        unpack_artifact(tmp_path / "o.tar.zst", tmp_path / "out", expected_sha256=sha)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_truncated_bundle_without_an_expected_sha256_is_refused_as_unreadable(tmp_path: Path) -> None:
    src = _make_tree(tmp_path / "src", sorted(FILES), mtime=0, mode=0o644)
    _, size = pack_artifact(src, tmp_path / "o.tar.zst")
    with open(tmp_path / "o.tar.zst", "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(BundleError, match="not a readable"):
        unpack_artifact(tmp_path / "o.tar.zst", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_unpack_never_overwrites_what_is_already_in_the_destination(tmp_path: Path) -> None:
    src = _make_tree(tmp_path / "src", sorted(FILES), mtime=0, mode=0o644)
    pack_artifact(src, tmp_path / "o.tar.zst")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.json").write_bytes(b"mine")
    with pytest.raises(BundleError, match="overwrite"):
        unpack_artifact(tmp_path / "o.tar.zst", tmp_path / "out")
    assert _tree(tmp_path / "out") == {"model.json": b"mine"}


_MEMORY_PROBE = """
import json, sys
from pathlib import Path
from mqfleet.store.bundle import pack_artifact

def kib(field):
    # VmHWM (peak RSS) belongs to this exec'd image; ru_maxrss would carry over the forking pytest's peak.
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

before = kib("VmRSS")
sha, size = pack_artifact(Path(sys.argv[1]), Path(sys.argv[2]))
print(json.dumps({"growth_mib": (kib("VmHWM") - before) / 1024, "size": size}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from Linux /proc")
def test_packing_64_mib_keeps_memory_growth_far_below_the_output_size(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "weights.bin", "wb") as fh:
        for _ in range(64):
            fh.write(os.urandom(1 << 20))
    # A fresh process, so its peak RSS reflects packing alone, not this test session.
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(src), str(tmp_path / "o.tar.zst")],
        capture_output=True, text=True, timeout=90, check=True,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert report["size"] > 64 << 20  # random bytes do not compress: the whole 64 MiB went through
    assert report["growth_mib"] < 16, report
