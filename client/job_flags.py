"""The options of `rlhf jobs create <type>`, generated from the API's request models (`api.schemas.JOB_CREATE_MODELS`).

Each top-level scalar field and each scalar field of `hyperparameters` is a flag (`base_model` →
`--base-model`, `hyperparameters.beta` → `--beta`) with the field's description as help and its
default shown; other fields (`reward`, `lora`, `metadata`) take JSON or `@FILE`. `--spec FILE.json`
gives a whole body, which the flags then override. The body is validated with the same pydantic model
the API uses before anything is sent, so a bad value is reported against the flag that set it.

Importing this module imports `api.schemas` (and through it FastAPI's and SQLAlchemy's modules, about
half a second): the other commands never import it.
"""

import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from api.errors import param_of
from api.schemas import JOB_CREATE_MODELS

HYPER = "hyperparameters"
MODELS: dict[str, type[BaseModel]] = {model.model_fields["type"].annotation.__args__[0]: model
                                      for model in JOB_CREATE_MODELS}
OWN_OPTIONS = ("spec", "as_json", "quiet", "watch", "idempotency_key")


@dataclass(frozen=True)
class Flag:
    """One generated option: its name on the command line and the body field it sets."""

    name: str  # --learning-rate
    path: tuple[str, ...]  # ("hyperparameters", "learning_rate")
    is_json: bool

    @property
    def dest(self) -> str:
        return "__".join(self.path)

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


class JsonValue(click.ParamType):
    """A JSON value given inline or as `@FILE`."""

    name = "JSON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        text = value
        if value.startswith("@"):
            try:
                text = Path(value[1:]).read_text()
            except OSError as exc:
                self.fail(f"cannot read {value[1:]}: {exc.strerror}", param, ctx)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            self.fail(f"not valid JSON ({exc}): {text[:80]!r}", param, ctx)


def scalar_type(annotation: Any) -> click.ParamType | None:
    """The click type of a scalar field (`float | None` → FLOAT, a Literal → a choice), or None for the others."""
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
            kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(kinds) != 1:
                return None
            annotation = kinds[0]
        else:
            break
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        return click.Choice(choices) if all(isinstance(c, str) for c in choices) else None
    return {bool: click.BOOL, int: click.INT, float: click.FLOAT, str: click.STRING}.get(annotation)


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _help(field: Any, *, required: bool, is_json: bool) -> str:
    text = (field.description or "").strip()
    if is_json:
        text += " JSON, or @FILE holding it"
        if field.examples:
            text += f"; e.g. '{json.dumps(field.examples[0])}'"
        text += "."
    if required:
        text += " [required unless in --spec]"
    elif field.default not in (PydanticUndefined, None):
        text += f" [default: {str(field.default).lower() if isinstance(field.default, bool) else field.default}]"
    return text


def options(model: type[BaseModel]) -> tuple[list[Flag], list[click.Option]]:
    """The flags of one job type's request model, with their click options (service fields, then hyperparameters)."""
    flags, opts = [], []

    def add(path: tuple[str, ...], field: Any, required: bool) -> None:
        kind = scalar_type(field.annotation)
        flag = Flag(flag_name(path[-1]), path, is_json=kind is None)
        flags.append(flag)
        opts.append(click.Option([flag.name, flag.dest], type=kind or JsonValue(), default=None,
                                 metavar="JSON" if kind is None else None,
                                 help=_help(field, required=required, is_json=kind is None)))

    for name, field in model.model_fields.items():
        if name == "type":
            continue
        if name == HYPER:
            for hp_name, hp_field in field.annotation.model_fields.items():
                add((HYPER, hp_name), hp_field, required=False)
        else:
            add((name,), field, required=field.is_required())
    names = [f.name for f in flags]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise RuntimeError(f"{model.__name__}: fields share the flags {sorted(duplicates)}")
    return flags, opts


def body_of(job_type: str, flags: list[Flag], values: dict[str, Any], spec: dict[str, Any] | None) -> dict[str, Any]:
    """The request body: the spec's, with the type of the command and every flag given set in it."""
    body = json.loads(json.dumps(spec)) if spec else {}
    if body.get("type", job_type) != job_type:
        raise click.UsageError(f"--spec: the spec's type is {body['type']!r}, but this command creates "
                               f"{job_type!r} jobs")
    body["type"] = job_type
    for flag in flags:
        value = values.get(flag.dest)
        if value is None:
            continue
        target = body
        for part in flag.path[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[flag.path[-1]] = value
    return body


def validate(model: type[BaseModel], body: dict[str, Any], flags: list[Flag], given: set[str],
             spec_given: bool) -> None:
    """Validate the body as the API will; a `click.UsageError` names the flag (or the spec's field) of each problem."""
    try:
        model.model_validate(body)
    except ValidationError as exc:
        lines = [_problem(error, flags, given, spec_given) for error in exc.errors()]
        raise click.UsageError("invalid job spec:\n  " + "\n  ".join(lines)) from None


def _problem(error: dict[str, Any], flags: list[Flag], given: set[str], spec_given: bool) -> str:
    loc = tuple(error["loc"])
    path = param_of(loc, error["type"])
    message = error["msg"]
    if isinstance(error.get("input"), str | int | float | bool) and error["type"] != "missing":
        message += f" (got {error['input']!r})"
    flag = owner(path, flags)
    if flag is None or (spec_given and flag.dest not in given):
        where = f"--spec: {path}" if spec_given else path
        return f"{where}: {message}"
    return f"{flag.name}: {message}" if path == flag.dotted else f"{flag.name} ({path}): {message}"


def owner(path: str, flags: list[Flag]) -> Flag | None:
    """The flag that sets the field at `path` (a dotted path such as `reward.graders[0].name`), or one around it."""
    best = None
    for flag in flags:
        if path == flag.dotted or path.startswith((flag.dotted + ".", flag.dotted + "[")):
            if best is None or len(flag.dotted) > len(best.dotted):
                best = flag
    return best
