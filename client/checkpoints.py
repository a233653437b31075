"""`rlhf checkpoints`: list a job's checkpoints, download one with its sha256 checked."""

import hashlib
import re
from pathlib import Path
from urllib.parse import quote

import click
import httpx
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from client.errors import ClientError
from client.http import LONG_TIMEOUT, Api
from client.output import console, json_option, one_format, printed_plainly, quiet_option, size, table
from client.stream import job_path
from client.watch import metrics_text


@click.group("checkpoints")
def group() -> None:
    """List and download checkpoints."""


@group.command("list")
@click.argument("job_id")
@json_option
@quiet_option
@click.pass_obj
def list_(api: Api, job_id: str, as_json: bool, quiet: bool) -> None:
    """List a job's checkpoints by step, the last one last."""
    one_format(as_json, quiet)
    page = api.get(f"{job_path(job_id)}/checkpoints", params={"limit": 1000})
    if printed_plainly(page, as_json, quiet):
        return
    table(("id", "step", "final", "size", "sha256", "metrics"),
          ((c["id"], c["step"], "yes" if c["is_final"] else "", size(c["size_bytes"]), c["sha256"][:12],
            metrics_text(c.get("metrics") or {})) for c in page["data"]))


def expected_sha256(api: Api, checkpoint_id: str, response: httpx.Response, merged: bool) -> str:
    """The archive's sha256: the download's ETag, else the checkpoint's recorded digest."""
    etag = response.headers.get("ETag", "").strip('"').removeprefix("W/").strip('"')
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        return etag
    checkpoint = api.get(f"/v1/checkpoints/{quote(checkpoint_id, safe='')}")
    digest = checkpoint.get("merged_sha256") if merged else checkpoint.get("sha256")
    if not digest:
        raise ClientError(f"the API gave no sha256 for {checkpoint_id}; the download cannot be checked")
    return digest


def file_name(response: httpx.Response, checkpoint_id: str) -> str:
    match = re.search(r'filename="([^"/\\]+)"', response.headers.get("Content-Disposition", ""))
    return match[1] if match else f"{checkpoint_id}.tar"


@group.command()
@click.argument("checkpoint_id")
@click.option("--merged", is_flag=True, help="A LoRA checkpoint's base and adapter as one model (built on first ask).")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Where to write the archive [default: <checkpoint id>.tar, or a folder to put it in].")
@click.pass_obj
def download(api: Api, checkpoint_id: str, merged: bool, output: Path | None) -> None:
    """Download a checkpoint's tar archive (a save_pretrained directory) and check its sha256."""
    path = f"/v1/checkpoints/{quote(checkpoint_id, safe='')}/download"
    digest = hashlib.sha256()
    partial: Path | None = None
    try:
        with api.transport_errors(), api.stream("GET", path, params={"merged": "true"} if merged else {},
                                                timeout=LONG_TIMEOUT) as response:
            target = output or Path(file_name(response, checkpoint_id))
            if target.is_dir():
                target = target / file_name(response, checkpoint_id)
            partial = target.with_name(target.name + ".part")  # the archive's name only once it is checked
            total = int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
            columns = (TextColumn(target.name), BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with partial.open("wb") as out, Progress(*columns, console=console,
                                                     disable=not console.is_terminal) as bar:
                task = bar.add_task("download", total=total)
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.advance(task, len(chunk))
            expected = expected_sha256(api, checkpoint_id, response, merged)
        if digest.hexdigest() != expected:
            raise ClientError(f"the download of {checkpoint_id} is corrupt: sha256 {digest.hexdigest()}, "
                              f"expected {expected}; nothing was written")
    except BaseException:
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    console.print(f"{target}  {size(target.stat().st_size)}  sha256 {expected} OK", soft_wrap=True, markup=False)
