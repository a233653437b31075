"""Run a trainer standalone: ``python -m trainers dpo --data rows.jsonl --base-model builtin:tiny-llama --output DIR``.

One subcommand per job type of `JobConfig` (`ALGORITHMS`). Hyperparameter flags are generated from the config
models (``--max-steps``, ``--learning-rate``, ...), so they and their defaults are declared once;
``--lora '{"r": 8}'`` trains adapters. Preference trainers read preference rows, online-RL trainers
(``grpo``, ``ppo``) prompt rows and a ``--reward`` spec in JSON, with ``--reward-model-dir CHECKPOINT_ID=DIR``
for each reward-model checkpoint it names. Metrics go to stdout as JSON lines
(``{"step": ..., "train/loss": ...}``), events to stderr, checkpoints to ``DIR/checkpoint-<step>/``.
The first Ctrl-C stops cooperatively after the current step, saving a checkpoint.

``python -m trainers merge --model-dir CHECKPOINT/model --output DIR`` writes a LoRA checkpoint's
base and adapter as one full model (`trainers.models.export.merge_checkpoint`).

``python -m trainers score --model-dir CHECKPOINT/model`` reads a JSON list of items
(``{"text": ...}`` or ``{"prompt": ..., "response": ...}``) on stdin and writes a JSON list of
``{"score", "normalized"}`` on stdout (`trainers.models.scoring.score`).

``python -m trainers serve-ops --cache-bytes N`` stays up and answers score and merge requests, one
JSON object per line on stdin and stdout, keeping recently used reward models loaded
(`trainers.models.ops_server`); the service runs one beside each API process.

Exit status: 0 on success, 2 for bad input (data, spec, model), 1 for a numerical failure.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from trainers.spec.callbacks import Callbacks
from trainers.spec.config import JOB_MODELS_BY_TYPE, JobSpec
from trainers.spec.errors import NumericalError, UserError
from trainers.spec.formats import DatasetKind, RowError, normalize_row
from trainers.spec.results import TrainingData


def hyperparameters_model(job_model: type[JobSpec]) -> type[BaseModel]:
    """The hyperparameters model a job model takes (``DPOJob`` → ``DPOHyperparameters``)."""
    return job_model.model_fields["hyperparameters"].annotation


# Subcommand → (job model, hyperparameters model, kind of its dataset rows): one per job type.
ALGORITHMS: dict[str, tuple[type[JobSpec], type[BaseModel], DatasetKind]] = {
    job_type: (job_model, hyperparameters_model(job_model), job_model.dataset_kind)
    for job_type, job_model in JOB_MODELS_BY_TYPE.items()
}


class ConsoleCallbacks(Callbacks):
    """Print metrics as JSON lines, events to stderr, and save checkpoints under an output folder."""

    def __init__(self, output: Path):
        self.output = output
        self.stop_requested = False

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        print(json.dumps({"step": step, **metrics}), flush=True)

    def on_checkpoint(self, step: int, save: Callable[[Path], None], info: dict) -> None:
        directory = self.output / f"checkpoint-{step}"
        directory.mkdir(parents=True, exist_ok=False)
        save(directory)
        print(f"[info] saved checkpoint {directory}", file=sys.stderr, flush=True)

    def should_stop(self) -> bool:
        return self.stop_requested

    def on_event(self, level: str, message: str) -> None:
        print(f"[{level}] {message}", file=sys.stderr, flush=True)


def read_rows(path: Path, kind: DatasetKind = "preference") -> list[dict[str, Any]]:
    """Read a JSON-lines file of rows in any accepted format, as canonical rows.

    Args:
        path: the `.jsonl` file (preference rows: plain, conversational or OpenAI; prompt rows).
        kind: the dataset kind the rows must be.

    Returns:
        One canonical row per non-blank line.

    Raises:
        UserError: unreadable file, invalid JSON or an invalid row; the message names the line.
    """
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc}", param="data") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}, line {number}: invalid JSON ({exc.msg})", param="data") from exc
        try:
            rows.append(normalize_row(kind, row))
        except RowError as exc:
            raise UserError(f"{path}, line {number}: {exc}", param="data") from exc
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per algorithm (one flag per hyperparameter), `merge`, `score`, `serve-ops`."""
    parser = argparse.ArgumentParser(prog="python -m trainers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (job_model, hyper, _) in ALGORITHMS.items():
        cmd = sub.add_parser(name, help=f"train with {name}")
        cmd.add_argument("--data", type=Path, required=True, help="training rows (.jsonl)")
        cmd.add_argument("--eval-data", type=Path, help="evaluation rows (.jsonl)")
        cmd.add_argument("--base-model", required=True, help="builtin:tiny-llama, a model directory or a hub id")
        cmd.add_argument("--output", type=Path, required=True, help="folder for checkpoint-<step>/ directories")
        cmd.add_argument("--seed", type=int, default=0, help="seed for data order and dropout (default 0)")
        cmd.add_argument("--resume-from", type=Path, help="checkpoint directory to continue from")
        cmd.add_argument("--lora", type=json.loads, help='train LoRA adapters: JSON settings, e.g. \'{"r": 8}\'')
        if "reward" in job_model.model_fields:
            cmd.add_argument("--reward", type=json.loads, required=True,
                             help='reward spec as JSON, e.g. \'{"type": "string_check", "name": "a", '
                                  '"operation": "contains", "reference": "{{item.answer}}"}\'')  # fmt: skip
            cmd.add_argument("--reward-model-dir", type=_checkpoint_dir, action="append", default=[],
                             metavar="CHECKPOINT_ID=DIR", help="where a reward-model checkpoint the reward names is")
            cmd.add_argument("--reward-function-module", action="append", default=[], metavar="MODULE",
                             help="module whose registered reward functions 'function' graders may call")
        for field_name, field in hyper.model_fields.items():
            flag = "--" + field_name.replace("_", "-")
            kind, choices = _flag_type(field.annotation)
            cmd.add_argument(
                flag, dest=field_name, type=kind, choices=choices, default=None,
                help=f"{field.description} (default {field.default})",
            )  # fmt: skip
    merge = sub.add_parser("merge", help="write a LoRA checkpoint's base and adapter as one full model")
    merge.add_argument("--model-dir", type=Path, required=True, help="a checkpoint's model/ directory")
    merge.add_argument("--output", type=Path, required=True, help="folder for the merged model")
    score = sub.add_parser("score", help="score the JSON list of items on stdin with a reward-model checkpoint")
    score.add_argument("--model-dir", type=Path, required=True, help="a reward-model checkpoint's model/ directory")
    serve = sub.add_parser("serve-ops", help="answer score and merge requests (JSON lines) until stdin closes")
    serve.add_argument("--cache-bytes", type=int, default=2 * 1024**3, help="most bytes of loaded reward models")
    serve.add_argument("--idle-seconds", type=float, default=600.0, help="drop loaded models after this idle time")
    serve.add_argument("--parent-pid", type=int, help="die with this process (Linux)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the command, and return the process exit status."""
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep stderr to our own event lines
    try:
        if args.command == "merge":
            from trainers.models.export import merge_checkpoint

            merge_checkpoint(args.model_dir, args.output)
            return 0
        if args.command == "score":
            return score(args.model_dir)
        if args.command == "serve-ops":
            from trainers.models.ops_server import serve

            return serve(cache_bytes=args.cache_bytes, idle_seconds=args.idle_seconds, parent_pid=args.parent_pid)
        return train(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NumericalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def train(args: argparse.Namespace) -> int:
    """Run the training subcommand `args.command` and return the exit status."""
    job_model, hyper, kind = ALGORITHMS[args.command]
    overrides = {k: getattr(args, k) for k in hyper.model_fields if getattr(args, k) is not None}
    reward = {}
    if "reward" in job_model.model_fields:
        reward = {"reward": args.reward, "reward_model_dirs": dict(args.reward_model_dir),
                  "reward_function_modules": args.reward_function_module}  # fmt: skip
    try:
        job = job_model(
            type=args.command, base_model=args.base_model, seed=args.seed, lora=args.lora, hyperparameters=overrides,
            **reward,
        )
    except ValidationError as exc:
        print(f"error: invalid job settings:\n{exc}", file=sys.stderr)
        return 2
    callbacks = ConsoleCallbacks(args.output)

    def request_stop(signum: int, frame: Any) -> None:
        callbacks.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts

    signal.signal(signal.SIGINT, request_stop)
    from trainers import run

    data = TrainingData(
        train=read_rows(args.data, kind), eval=read_rows(args.eval_data, kind) if args.eval_data else None
    )
    result = run(job, data, callbacks, resume_from=args.resume_from)
    print(f"[info] {result.status} at step {result.step}", file=sys.stderr)
    return 0


def score(model_dir: Path) -> int:
    """Score the JSON list of items on stdin with the reward model in `model_dir`; print the results."""
    from trainers.models.scoring import score as score_items

    try:
        items = json.load(sys.stdin)
    except json.JSONDecodeError as exc:
        raise UserError(f"stdin: invalid JSON ({exc.msg})", param="items") from exc
    if not isinstance(items, list):
        raise UserError("stdin: expected a JSON list of items", param="items")
    print(json.dumps(score_items(model_dir, items)), flush=True)
    return 0


def _flag_type(annotation: Any) -> tuple[Callable[[str], Any], list[Any] | None]:
    """argparse type and choices for a config field's annotation (int | None → int, Literal → choices)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        choices = list(typing.get_args(annotation))
        return type(choices[0]), choices
    if annotation is bool:
        return _boolean, None  # bool("false") would be True
    return annotation, None


def _boolean(text: str) -> bool:
    """A boolean flag's value: true/false, yes/no or 1/0, any case."""
    value = text.strip().lower()
    if value not in ("true", "false", "yes", "no", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "yes", "1")


def _checkpoint_dir(text: str) -> tuple[str, str]:
    """A ``CHECKPOINT_ID=DIR`` argument as (id, directory)."""
    checkpoint_id, sep, directory = text.partition("=")
    if not sep or not checkpoint_id or not directory:
        raise argparse.ArgumentTypeError(f"expected CHECKPOINT_ID=DIR, got {text!r}")
    return checkpoint_id, directory


if __name__ == "__main__":
    sys.exit(main())
