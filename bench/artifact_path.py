"""Benchmark of the agent's artifact path: pack (tar+zstd+sha256) and presigned upload to a local S3, vs a plain fput.

Run: `python -m bench.artifact_path --mib 512`. Starts its own SeaweedFS (LocalS3) in a scratch folder, generates
an output folder of model-like weights (float32 normals with the low mantissa bits zeroed, as a checkpoint
saved at reduced precision looks, so zstd finds something but not much), and reports MB/s and peak RSS. The
upload is the agent's: a POST form whose policy takes exactly the bundle's size (docs/SECURITY.md,
"Artifacts"); the presigned PUT it replaced is timed on the same bundle beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from mqfleet.local.s3 import LocalS3
from mqfleet.store.bundle import pack_artifact
from mqfleet.store.transfer import upload_to_url

MIB = 1 << 20
#: Weights are written in files of at most this size, as sharded checkpoints are.
SHARD_MIB = 64


def generate_output(out_dir: Path, mib: int, seed: int = 0) -> int:
    """Write `mib` MiB of weight shards plus a metrics file; returns the bytes written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written, shard = 0, 0
    while written < mib * MIB:
        shard_bytes = min(SHARD_MIB * MIB, mib * MIB - written)
        with open(out_dir / f"weights-{shard:03d}.bin", "wb") as fh:
            # Filled in slices so the generator's own memory stays small next to the run being measured.
            for start in range(0, shard_bytes, 8 * MIB):
                count = min(8 * MIB, shard_bytes - start) // 4
                block = rng.standard_normal(count, dtype=np.float32).view(np.uint32) & np.uint32(0xFFFFF000)
                fh.write(block.tobytes())
        written += shard_bytes
        shard += 1
    (out_dir / "metrics.json").write_text(json.dumps({"loss": 0.31, "epochs": 10}))
    return written


class _PeakRss:
    """Samples this process's RSS in a thread; `peak` is the highest seen."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self._proc = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def measure_artifact_path(mib: int, workdir: Path) -> dict[str, Any]:
    """Time pack+hash+presigned upload of a generated `mib` MiB output against an fput of the same bundle."""
    out_dir, bundle = workdir / "out", workdir / "bundle.tar.zst"
    input_bytes = generate_output(out_dir, mib)
    with LocalS3(workdir / "s3") as s3:
        store = s3.open_store("bench")
        before_rss = psutil.Process().memory_info().rss
        with _PeakRss() as rss:
            began = time.perf_counter()
            sha, size = pack_artifact(out_dir, bundle)
            packed = time.perf_counter()
            upload = store.presign_upload(store.staging_key("be" * 16), size, 3600)
            upload_to_url(upload.url, bundle, method=upload.method, fields=upload.fields)
            uploaded = time.perf_counter()
        if store.stat(store.staging_key("be" * 16)) != size:
            raise RuntimeError("uploaded object has the wrong size")
        began_put = time.perf_counter()
        upload_to_url(store.presign_put(store.key_for(sha)), bundle)
        put_s = time.perf_counter() - began_put
        began_fput = time.perf_counter()
        store.put_file(f"baseline/{sha}.tar.zst", bundle)
        fput_s = time.perf_counter() - began_fput
        # A plain PUT of the very bytes the trainer wrote, file by file: what the artifact path replaces.
        began_raw = time.perf_counter()
        for path in sorted(out_dir.iterdir()):
            store.put_file(f"baseline-raw/{sha}/{path.name}", path)
        raw_put_s = time.perf_counter() - began_raw
        s3_start_s = s3.start_s
    pack_s, upload_s = packed - began, uploaded - packed
    return {
        "input_mib": input_bytes / MIB,
        "bundle_mib": round(size / MIB, 2),
        "compression_ratio": round(size / input_bytes, 3),
        "pack_s": round(pack_s, 3),
        "pack_mib_s": round(input_bytes / MIB / pack_s, 1),
        "presigned_post_s": round(upload_s, 3),
        "presigned_post_mib_s": round(size / MIB / upload_s, 1),
        "presigned_put_s": round(put_s, 3),
        "presigned_put_mib_s": round(size / MIB / put_s, 1),
        "agent_path_s": round(pack_s + upload_s, 3),
        "agent_path_mib_s": round(input_bytes / MIB / (pack_s + upload_s), 1),
        "minio_fput_s": round(fput_s, 3),
        "minio_fput_mib_s": round(size / MIB / fput_s, 1),
        "raw_put_s": round(raw_put_s, 3),
        "raw_put_mib_s": round(input_bytes / MIB / raw_put_s, 1),
        "agent_peak_rss_growth_mib": round((rss.peak - before_rss) / MIB, 1),
        "seaweedfs_start_s": round(s3_start_s or 0.0, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=512, help="size of the generated output folder (MiB)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new temp folder, removed)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mqfleet-bench-"))
    try:
        print(json.dumps(measure_artifact_path(args.mib, workdir), indent=2))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
