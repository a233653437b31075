"""The client's errors: one line on stderr (plus the API's per-row details), never a traceback."""

from typing import IO, Any

import click

MAX_DETAILS = 10


class ClientError(click.ClickException):
    """An error the user can act on; `rlhf` exits with `exit_code` (1) after printing it."""

    exit_code = 1

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.details = details or []

    def show(self, file: IO[str] | None = None) -> None:
        click.secho(f"error: {self.headline()}", err=True, fg="red")
        for line in detail_lines(self.details, self.message):
            click.echo(f"  {line}", err=True)

    def headline(self) -> str:
        return self.message


class ApiError(ClientError):
    """The API refused a request: its status, and the field (`param`) its error envelope names."""

    def __init__(self, message: str, *, status: int, param: str | None = None,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, details=details)
        self.status, self.param = status, param

    def headline(self) -> str:
        return f"{self.message} (HTTP {self.status})"


def detail_lines(details: list[dict[str, Any]], message: str) -> list[str]:
    """The envelope's `details` as lines (`line 3, chosen: ...` for rows), without a repeat of the message."""
    lines = []
    for item in details:
        where = ", ".join(str(part) for part in (
            f"line {item['line']}" if item.get("line") is not None else None, item.get("field")) if part)
        text = f"{where}: {item.get('message', '')}" if where else str(item.get("message", item))
        if text != message:
            lines.append(text)
    if len(lines) > MAX_DETAILS:
        lines = [*lines[:MAX_DETAILS], f"... and {len(lines) - MAX_DETAILS} more"]
    return lines
