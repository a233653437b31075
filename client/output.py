"""Printing: Rich tables for people, `--json` for scripts, and the small formats both tables use."""

import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

# Piped into a file or another program, lines are not wrapped at 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer, for scripts.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="Print only the ids, one per line, for scripts.")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def print_ids(items: Iterable[dict[str, Any]]) -> None:
    """`--quiet`: each item's id on a line of its own, in the order given (`| tail -n 1` is the last)."""
    sys.stdout.write("".join(f"{item['id']}\n" for item in items))


def printed_plainly(page: dict[str, Any], as_json: bool, quiet: bool) -> bool:
    """Print a list answer as the API's JSON (`--json`) or its ids (`--quiet`); False when neither was asked,
    so the caller prints its table."""
    if as_json:
        print_json(page)
    elif quiet:
        print_ids(page["data"])
    return as_json or quiet


def one_format(as_json: bool, quiet: bool) -> None:
    """Refuse `--json` with `--quiet` (exit status 2, before anything is sent)."""
    if as_json and quiet:
        raise click.UsageError("--json and --quiet: give one of them")


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table whose first column (the ids people copy) is never cut or wrapped; the others wrap."""
    cells = [["-" if cell is None else str(cell) for cell in row] for row in rows]
    grid = Table(header_style="bold", box=box.SIMPLE_HEAD)
    for i, name in enumerate(columns):
        if i == 0:
            grid.add_column(name, no_wrap=True, min_width=max((len(row[0]) for row in cells), default=0))
        else:
            grid.add_column(name, overflow="fold")
    for row in cells:
        grid.add_row(*row)
    console.print(grid)


def fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """One `name  value` line per field that has a value."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for name, value in pairs:
        if value not in (None, "", {}, []):
            grid.add_row(name, value if isinstance(value, str) else json.dumps(value))
    console.print(grid)


def size(n: int | None) -> str | None:
    if n is None:
        return None
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return None


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def duration(seconds: float | None) -> str:
    """`1:02:03`, `4:05` or `-` (unknown)."""
    if seconds is None or seconds != seconds:
        return "-"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta(job: dict[str, Any], now: datetime | None = None) -> str:
    """Time left until the job's `estimated_finish`, for a job that is still running."""
    finish = parse_time(job.get("estimated_finish"))
    if finish is None or job.get("status") not in ("running", "cancelling", "pausing"):
        return "-"
    return duration((finish - (now or datetime.now(UTC))).total_seconds())


def progress(job: dict[str, Any]) -> str:
    step, total = job.get("current_step") or 0, job.get("total_steps")
    return f"{step}/{total}" if total else str(step)


def when(text: str | None) -> str | None:
    moment = parse_time(text)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else None
