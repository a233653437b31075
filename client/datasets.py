"""`rlhf datasets`: upload a file, list datasets, preview rows."""

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from client.http import LONG_TIMEOUT, Api
from client.output import (
    console,
    json_option,
    one_format,
    print_ids,
    print_json,
    printed_plainly,
    quiet_option,
    size,
    table,
    when,
)

KINDS = ("preference", "prompt", "chat", "feedback", "text")


@click.group("datasets")
def group() -> None:
    """Upload and read datasets."""


def column_map(pairs: tuple[str, ...]) -> str | None:
    """`key=column` pairs as the upload's column_map JSON object."""
    mapping = {}
    for pair in pairs:
        key, sep, column = pair.partition("=")
        if not sep or not key or not column:
            raise click.BadParameter(f"expected KEY=COLUMN, got {pair!r}", param_hint="--column-map")
        mapping[key] = column
    return json.dumps(mapping) if mapping else None


@group.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", required=True, type=click.Choice(KINDS),
              help="preference (reward models, DPO, KTO), prompt (PPO, GRPO), chat (SFT), feedback (KTO), "
                   "text (PPO-ptx).")
@click.option("--name", help="The dataset's name [default: the file's name].")
@click.option("--column-map", "pairs", multiple=True, metavar="KEY=COLUMN",
              help="Read a canonical key from another column of the file (repeatable), e.g. prompt=question.")
@click.option("--skip-invalid", is_flag=True, help="Store the valid rows and report the others (default: all or none).")
@json_option
@click.option("-q", "--quiet", is_flag=True,
              help="Print only the new dataset's id (skipped rows, if any, are reported on stderr).")
@click.pass_obj
def upload(api: Api, file: Path, kind: str, name: str | None, pairs: tuple[str, ...], skip_invalid: bool,
           as_json: bool, quiet: bool) -> None:
    """Upload FILE (.jsonl, .json, .csv or .parquet); every row is validated by the API."""
    one_format(as_json, quiet)
    form = {"kind": kind, "skip_invalid": "true" if skip_invalid else "false"}
    if name is not None:
        form["name"] = name
    if (mapping := column_map(pairs)) is not None:
        form["column_map"] = mapping
    with file.open("rb") as handle, console.status(f"uploading {file.name} ({size(file.stat().st_size)})"):
        dataset = api.post("/v1/datasets", data=form, files={"file": (file.name, handle)}, timeout=LONG_TIMEOUT)
    if as_json:
        print_json(dataset)
        return
    if quiet:
        print_ids([dataset])
    else:
        console.print(f"{dataset['id']}  {dataset['kind']}  {dataset['row_count']} rows  {dataset['name']}")
    skipped = dataset.get("skipped")
    if skipped and skipped.get("count"):
        out = Console(stderr=True, highlight=False) if quiet else console  # stdout holds the id alone
        out.print(f"skipped {skipped['count']} invalid rows:", style="yellow")
        for row in skipped.get("rows", [])[:10]:
            field = f", {row['field']}" if row.get("field") else ""
            out.print(f"  line {row['line']}{field}: {row['message']}", soft_wrap=True, markup=False)


@group.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many, newest first.")
@json_option
@quiet_option
@click.pass_obj
def list_(api: Api, limit: int, as_json: bool, quiet: bool) -> None:
    """List the project's datasets, newest first."""
    one_format(as_json, quiet)
    page = api.get("/v1/datasets", params={"limit": limit})
    if printed_plainly(page, as_json, quiet):
        return
    table(("id", "name", "kind", "rows", "size", "created"),
          ((d["id"], d["name"], d["kind"], d["row_count"], size(d["size_bytes"]), when(d["created_at"]))
           for d in page["data"]))


@group.command()
@click.argument("dataset_id")
@click.option("--limit", type=click.IntRange(1, 1000), default=5, show_default=True, help="How many rows.")
@json_option
@click.pass_obj
def rows(api: Api, dataset_id: str, limit: int, as_json: bool) -> None:
    """Preview a dataset's first rows, in the normalised form training reads."""
    page = api.get(f"/v1/datasets/{dataset_id}/rows", params={"limit": limit})
    if as_json:
        print_json(page)
        return
    table(("idx", "line", "row"), ((r["idx"], r["line"], _clip(r["data"])) for r in page["data"]))


def _clip(data: dict[str, Any], width: int = 400) -> str:
    text = json.dumps(data, ensure_ascii=False)
    return text if len(text) <= width else text[:width] + " ..."
