"""`mqfleet artifacts` and `mqfleet fetch`: list stored artifacts; download, verify and unpack one."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from mqfleet.bundle import unpack_artifact
from mqfleet.cli import EXIT_FAILED, cli, render
from mqfleet.cli.client_options import ClientContext, fail, pass_client
from mqfleet.errors import ArtifactMismatchError, StoreError
from mqfleet.protocol import Verb
from mqfleet.transfer import download_from_url


@cli.command("artifacts")
@pass_client
def artifacts_cmd(ctx: ClientContext) -> None:
    """Stored artifacts: job, model, mode, sha256, size, metrics, host, created."""
    artifacts = ctx.client.call(Verb.ARTIFACTS)["artifacts"]
    if ctx.as_json:
        ctx.emit_json(artifacts)
        return
    render.make_console().print(render.artifacts_table(artifacts))


@cli.command("fetch")
@click.argument("job")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to unpack into (created; existing files are never overwritten).")
@pass_client
def fetch_cmd(ctx: ClientContext, job: str, out_dir: Path) -> None:
    """Download JOB's artifact, verify its sha256 and unpack it into DIR; nothing is unpacked if it does not match."""
    reply = ctx.client.call(Verb.DOWNLOAD_URL, job=job)
    sha256, url = str(reply["sha256"]), str(reply["url"])
    created = not out_dir.exists()
    out_dir = out_dir.resolve()
    # The download lands beside the destination, so the final moves stay on one file system.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mqfleet-fetch-", dir=out_dir.parent) as scratch:
        bundle = Path(scratch) / f"{sha256}.tar.zst"
        try:
            download_from_url(url, bundle)
            unpack_artifact(bundle, out_dir, expected_sha256=sha256)
        except StoreError as e:
            if created and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()
            what = "artifact does not match its sha256; nothing was unpacked" if isinstance(e, ArtifactMismatchError) else "fetch failed"
            fail(f"{what}: {e}", EXIT_FAILED)
    files = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    if ctx.as_json:
        ctx.emit_json({"job_id": reply.get("job_id"), "sha256": sha256, "size": reply.get("size"),
                       "dir": str(out_dir), "files": files})
        return
    click.echo(f"{sha256[:12]} ({render.human_size(reply.get('size'))}) verified, unpacked into {out_dir}: "
               f"{len(files)} file(s)")
