"""Run a trainer standalone: ``python -m trainers dpo --data rows.jsonl --base-model builtin:tiny-llama --output DIR``.

One subcommand per job type of `JobConfig` (`ALGORITHMS`). Hyperparameter flags are generated from the config
models (``--max-steps``, ``--learning-rate``, ...), so they and their defaults are declared once;
``--lora '{"r": 8}'`` trains adapters. Preference trainers read preference rows, ``sft`` chat rows
(``{"messages": [...]}`` or ``{"prompt", "completion"}``), ``kto`` feedback rows
(``{"prompt", "completion", "label": true|false}``) or preference rows (two examples each), online-RL
trainers (``grpo``, ``ppo``) prompt rows and a ``--reward`` spec in JSON, with ``--reward-model-dir CHECKPOINT_ID=DIR``
for each reward-model checkpoint it names. Metrics go to stdout as JSON lines
(``{"step": ..., "train/loss": ...}``), events to stderr, checkpoints to ``DIR/checkpoint-<step>/``;
PPO and GRPO also append a few completions of each logged rollout to ``DIR/samples.jsonl``
(``{"step": ..., "rows": [{"prompt", "completion", "reward", ...}]}``) and show them on stderr.
The first Ctrl-C stops cooperatively after the current step, saving a checkpoint.

``--processes N`` trains one job on N processes of this node (one per GPU): the command starts
torchrun itself (`trainers.distributed.launch.torchrun_command`), which runs the same subcommand in
each rank; ``--strategy`` is ``ddp`` or ``fsdp`` (``auto``: fsdp when the model and its optimizer
state would not fit one device). Several nodes run the same command on every node, with
``--nodes M --node-rank R --rdzv-endpoint HOST:PORT`` (node 0's address, any free port). Rank 0
alone prints metrics and events and writes checkpoints (on several nodes: on the node torchrun's
rendezvous gives rank 0, so give every node the same --output on shared storage, and press Ctrl-C
there); the exit status is torchrun's. torchrun
keeps the ranks away from the terminal's Ctrl-C, so this process catches it and creates a stop file
named in the ranks' environment (`STOP_FILE_ENV`), which rank 0 polls before each step; a second
Ctrl-C ends the ranks at once.

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
import os
import signal
import subprocess
import sys
import tempfile
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from trainers.spec.callbacks import Callbacks
from trainers.spec.config import JOB_MODELS_BY_TYPE, JobSpec, Strategy
from trainers.spec.errors import NumericalError, UserError
from trainers.spec.formats import DatasetKind, RowError, detect_kind, normalize_row
from trainers.spec.results import TrainingData


def hyperparameters_model(job_model: type[JobSpec]) -> type[BaseModel]:
    """The hyperparameters model a job model takes (``DPOJob`` → ``DPOHyperparameters``)."""
    return job_model.model_fields["hyperparameters"].annotation


# The file whose existence asks a job's ranks to stop after their current step: set by the command
# that launched them (a path in a folder of its own), polled by rank 0.
STOP_FILE_ENV = "RLHF_STOP_FILE"


SAMPLES_FILE = "samples.jsonl"  # PPO/GRPO: {"step", "rows"} per report (`Callbacks.on_samples`), under --output

# Subcommand → (job model, hyperparameters model, kind of its dataset rows): one per job type.
ALGORITHMS: dict[str, tuple[type[JobSpec], type[BaseModel], DatasetKind]] = {
    job_type: (job_model, hyperparameters_model(job_model), job_model.dataset_kind)
    for job_type, job_model in JOB_MODELS_BY_TYPE.items()
}


class ConsoleCallbacks(Callbacks):
    """Metrics as JSON lines on stdout, events and samples on stderr; checkpoints and samples under an output folder."""

    def __init__(self, output: Path, stop_file: Path | None = None):
        self.output = output
        self.stop_requested = False
        self.stop_file = stop_file  # a stop asked by the launching command (several processes)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        print(json.dumps({"step": step, **metrics}), flush=True)

    def on_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Append the rows to ``DIR/samples.jsonl`` and show each in one line on stderr."""
        self.output.mkdir(parents=True, exist_ok=True)
        with (self.output / SAMPLES_FILE).open("a") as file:
            file.write(json.dumps({"step": step, "rows": rows}) + "\n")
        for row in rows:
            reward = "-" if row["reward"] is None else f"{row['reward']:.4g}"
            print(f"[sample] step {step} reward {reward}: {_clip(row['prompt'])} -> {_clip(row['completion'])}",
                  file=sys.stderr, flush=True)

    def on_checkpoint(self, step: int, save: Callable[[Path], None], info: dict) -> None:
        directory = self.output / f"checkpoint-{step}"
        directory.mkdir(parents=True, exist_ok=False)
        save(directory)
        print(f"[info] saved checkpoint {directory}", file=sys.stderr, flush=True)

    def should_stop(self) -> bool:
        return self.stop_requested or (self.stop_file is not None and self.stop_file.exists())

    def on_event(self, level: str, message: str) -> None:
        print(f"[{level}] {message}", file=sys.stderr, flush=True)


def read_rows(path: Path, kind: DatasetKind = "preference") -> list[dict[str, Any]]:
    """Read a JSON-lines file of rows in any accepted format, as canonical rows.

    Args:
        path: the `.jsonl` file (preference rows: plain, conversational or OpenAI; prompt rows; chat rows).
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


def file_kind(path: Path, job_model: type[JobSpec]) -> DatasetKind:
    """The kind a file's rows are read as: one the job also reads (`JobSpec.also_reads`) when its first row is
    of that kind (`detect_kind`), else the job's own."""
    if job_model.also_reads:
        try:
            with path.open(encoding="utf-8") as lines:
                first = next((line for line in lines if line.strip()), "")
            kind = detect_kind(json.loads(first))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            kind = None  # read_rows names the problem
        if kind in job_model.also_reads:
            return kind
    return job_model.dataset_kind


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
        add_rank_flags(cmd)
        for field_name, field in hyper.model_fields.items():
            flag = "--" + field_name.replace("_", "-")
            kind, choices = _flag_type(field.annotation)
            cmd.add_argument(
                flag, dest=field_name, type=kind, choices=choices, default=None,
                help=_help_text(f"{field.description} (default {field.default})"),
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


def add_rank_flags(cmd: argparse.ArgumentParser) -> None:
    """The flags that spread one training command over several processes and nodes."""
    ranks = cmd.add_argument_group("several processes (torchrun)")
    ranks.add_argument("--processes", type=_positive, default=1,
                       help="processes on this node, one per GPU (default 1: this process trains alone)")
    ranks.add_argument("--strategy", choices=typing.get_args(Strategy), default="auto",
                       help="ddp: each process holds the whole model; fsdp: weights, gradients and optimizer "
                            "state sharded; auto: fsdp when they would not fit one device (default auto)")
    ranks.add_argument("--nodes", type=_positive, default=1, help="nodes in the job, each running this command")
    ranks.add_argument("--node-rank", type=int, default=0, help="this node's index, 0 to nodes - 1")
    ranks.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                       help="rendezvous every node reaches (node 0's address and a free port); needed with --nodes")


def launches_ranks(args: argparse.Namespace) -> bool:
    """Whether this command starts torchrun: several processes or nodes, and not itself one of the ranks."""
    return (args.processes > 1 or args.nodes > 1) and "RANK" not in os.environ


def is_main_rank() -> bool:
    """Whether this process prints: rank 0 of a job under torchrun, or any process outside one."""
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the command, and return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ALGORITHMS and args.nodes > 1 and not args.rdzv_endpoint:
        parser.error("--nodes above 1 needs --rdzv-endpoint HOST:PORT")
    if args.command in ALGORITHMS and not 0 <= args.node_rank < args.nodes:
        parser.error(f"--node-rank must be 0 to {args.nodes - 1}")
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
        if launches_ranks(args):
            return launch(args, list(argv) if argv is not None else sys.argv[1:])
        return train(args)
    except UserError as exc:
        _error(exc)
        return 2
    except NumericalError as exc:
        _error(exc)
        return 1


def job_from_args(args: argparse.Namespace) -> JobSpec:
    """The job spec the training subcommand's flags describe.

    Raises:
        ValidationError: invalid hyperparameters or settings.
    """
    job_model, hyper, _ = ALGORITHMS[args.command]
    overrides = {k: getattr(args, k) for k in hyper.model_fields if getattr(args, k) is not None}
    reward = {}
    if "reward" in job_model.model_fields:
        reward = {"reward": args.reward, "reward_model_dirs": dict(args.reward_model_dir),
                  "reward_function_modules": args.reward_function_module}  # fmt: skip
    return job_model(
        type=args.command, base_model=args.base_model, seed=args.seed, lora=args.lora, hyperparameters=overrides,
        processes=args.processes * args.nodes, strategy=args.strategy, **reward,
    )  # fmt: skip


def launch(args: argparse.Namespace, argv: list[str]) -> int:
    """Run this training command as ``args.processes`` ranks of this node under torchrun; torchrun's exit status.

    The job's settings and rows are checked here first, so bad input exits 2 before any rank starts.
    torchrun starts in a session of its own, away from the terminal's Ctrl-C: the first Ctrl-C here
    creates the stop file rank 0 polls (the run stops after its current step, with a checkpoint),
    a second one sends torchrun SIGTERM, which ends the ranks. If this process dies, torchrun and
    its ranks die with it (`trainers.distributed.launch`).
    """
    from trainers.distributed.launch import torchrun_command

    try:
        job_from_args(args)
    except ValidationError as exc:
        print(f"error: invalid job settings:\n{exc}", file=sys.stderr)
        return 2
    kind = ALGORITHMS[args.command][2]
    read_rows(args.data, kind)
    if args.eval_data:
        read_rows(args.eval_data, kind)
    command, env = torchrun_command(["-m", "trainers", *argv], processes=args.processes, nodes=args.nodes,
                                    node_rank=args.node_rank, rendezvous=args.rdzv_endpoint)  # fmt: skip
    package_root = str(Path(__file__).resolve().parents[1])  # the ranks import this copy of `trainers`
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="rlhf-stop-") as folder:
        stop_file = Path(folder) / "stop"
        agent = subprocess.Popen(command, env=os.environ | env | {STOP_FILE_ENV: str(stop_file), "PYTHONPATH": path},
                                 start_new_session=True)  # fmt: skip

        def request_stop(signum: int, frame: Any) -> None:
            if stop_file.exists():
                agent.send_signal(signal.SIGTERM)  # the second Ctrl-C: torchrun ends its ranks
                return
            stop_file.touch()
            print("[info] stopping after the current step (Ctrl-C again to end now)", file=sys.stderr, flush=True)

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            status = agent.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
    return status if status >= 0 else 128 - status  # killed by a signal: the shell's convention


def train(args: argparse.Namespace) -> int:
    """Run the training subcommand `args.command` in this process (alone, or as one rank) and return the exit status.

    Under torchrun only rank 0 prints: its callbacks alone are called (`RankCallbacks`).
    """
    job_model = ALGORITHMS[args.command][0]
    try:
        job = job_from_args(args)
    except ValidationError as exc:
        if is_main_rank():
            print(f"error: invalid job settings:\n{exc}", file=sys.stderr)
        return 2
    stop_file = os.environ.get(STOP_FILE_ENV)
    callbacks = ConsoleCallbacks(args.output, Path(stop_file) if stop_file else None)

    def request_stop(signum: int, frame: Any) -> None:
        callbacks.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts

    signal.signal(signal.SIGINT, request_stop)
    from trainers import run

    data = TrainingData(
        train=read_rows(args.data, file_kind(args.data, job_model)),
        eval=read_rows(args.eval_data, file_kind(args.eval_data, job_model)) if args.eval_data else None,
    )
    result = run(job, data, callbacks, resume_from=args.resume_from)
    if is_main_rank():
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


def _clip(text: str, width: int = 60) -> str:
    """`text` as a one-line repr, cut to about `width` characters."""
    shown = repr(text)
    return shown if len(shown) <= width else shown[: width - 4] + "...'"


def _error(exc: Exception) -> None:
    """Print an error once per job: every rank meets the same bad input, so only rank 0 says so."""
    if is_main_rank():
        print(f"error: {exc}", file=sys.stderr)


def _help_text(text: str) -> str:
    """Help as argparse prints it: argparse formats help with `%` (`%(default)s`), so a `%` of the text is `%%`."""
    return text.replace("%", "%%")


def _positive(text: str) -> int:
    """A count of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a count of at least 1, got {text!r}")
    return value


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
