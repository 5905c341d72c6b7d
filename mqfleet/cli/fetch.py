"""`mqfleet fetch`: download one artifact, verify it and unpack it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from mqfleet.cli import cli
from mqfleet.cli.exit_codes import EXIT_FAILED, fail
from mqfleet.cli.options import ClientContext, pass_client
from mqfleet.errors import ArtifactMismatchError, BundleError, StoreError
from mqfleet.store.bundle import UnpackLimits, unpack_artifact
from mqfleet.store.transfer import download_from_url

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class ByteSize(click.ParamType[int]):
    """A size in bytes, with an optional binary unit: 500M, 32G, 1T (K/M/G/T, optionally followed by iB or B)."""

    name = "SIZE"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().removesuffix("ib").removesuffix("b")
        unit = text[-1:] if text[-1:] in _UNITS else ""
        number = text[: len(text) - len(unit)]
        try:
            size = int(float(number) * _UNITS[unit])
        except ValueError:
            self.fail(f"{value!r} is not a size such as 500M or 32G", param, ctx)
        if size <= 0:
            self.fail(f"{value!r} must be more than 0 bytes", param, ctx)
        return size


_DEFAULT_LIMITS = UnpackLimits()


@cli.command("fetch")
@click.argument("job")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to unpack into (created; existing files are never overwritten).")
@click.option("--max-bytes", type=ByteSize(), default=_DEFAULT_LIMITS.max_bytes, show_default="32G",
              help="Refuse an artifact that unpacks to more than this (e.g. 64G).")
@click.option("--max-files", type=click.IntRange(min=1), default=_DEFAULT_LIMITS.max_files, show_default=True,
              help="Refuse an artifact with more files and folders than this.")
@click.option("--max-ratio", type=click.FloatRange(min=1.0), default=_DEFAULT_LIMITS.max_ratio, show_default=True,
              help="Refuse an artifact that unpacks to more than this many times its compressed size.")
@pass_client
def fetch_cmd(ctx: ClientContext, job: str, out_dir: Path, max_bytes: int, max_files: int, max_ratio: float) -> None:
    """Download JOB's artifact, verify its sha256 and unpack it into DIR.

    Nothing is left in DIR when the artifact does not match its size or sha256 or crosses a limit
    (unpacked size, file count, compression ratio: a decompression bomb stops early). The download
    reads no byte past the artifact's recorded size.
    """
    limits = UnpackLimits(max_bytes=max_bytes, max_files=max_files, max_ratio=max_ratio)
    reply = ctx.client.download_url(job)
    sha256, url = reply.sha256, reply.url
    created = not out_dir.exists()
    out_dir = out_dir.resolve()
    # The download lands beside the destination, so the final moves stay on one file system.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mqfleet-fetch-", dir=out_dir.parent) as scratch:
        bundle = Path(scratch) / f"{sha256}.tar.zst"
        try:
            download_from_url(url, bundle, size=reply.size)
            unpack_artifact(bundle, out_dir, expected_sha256=sha256, limits=limits)
        except StoreError as e:
            if created and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()
            if isinstance(e, ArtifactMismatchError):
                what = "artifact does not match its recorded size or sha256; nothing was unpacked"
            elif isinstance(e, BundleError):
                what = "artifact refused; nothing was unpacked"
            else:
                what = "fetch failed"
            fail(f"{what}: {e}", EXIT_FAILED)
    files = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    if ctx.as_json:
        ctx.emit_json({"job_id": reply.job_id, "sha256": sha256, "size": reply.size,
                       "dir": str(out_dir), "files": files})
        return
    from mqfleet.cli.render.fleet import human_size

    click.echo(f"{sha256[:12]} ({human_size(reply.size)}) verified, unpacked into {out_dir}: "
               f"{len(files)} file(s)")
