"""Shared pieces of the trainer tests: the builtin tiny model and callbacks that record everything."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from trainers.data.prompts import tokenize_prompts
from trainers.rl.rewards import RewardComputer
from trainers.rl.rollout import Rollout, left_pad
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import GRPOJob

ROOT = Path(__file__).resolve().parents[3]


class RecordingCallbacks(Callbacks):
    """Keeps every metric, sample and event; saves each checkpoint under `root/checkpoint-<step>`.

    `stop_after` makes `should_stop` return True once that many steps have reported metrics.
    """

    def __init__(self, root: Path | None = None, *, stop_after: int | None = None):
        self.root = root
        self.stop_after = stop_after
        self.metrics: dict[int, dict[str, float]] = {}
        self.samples: dict[int, list[dict]] = {}
        self.events: list[tuple[str, str]] = []
        self.checkpoints: dict[int, tuple[Path | None, dict]] = {}
        self.polls = 0
        self.total_steps: list[int] = []

    def on_start(self, total_steps: int) -> None:
        self.total_steps.append(total_steps)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics[step] = dict(metrics)

    def on_samples(self, step: int, rows: list[dict]) -> None:
        self.samples[step] = rows

    def on_checkpoint(self, step: int, save: Callable[[Path], None], info: dict) -> None:
        directory = None
        if self.root is not None:
            directory = self.root / f"checkpoint-{step}"
            directory.mkdir(parents=True)
            save(directory)
        self.checkpoints[step] = (directory, info)

    def should_stop(self) -> bool:
        self.polls += 1
        return self.stop_after is not None and len(self.metrics) >= self.stop_after

    def on_event(self, level: str, message: str) -> None:
        self.events.append((level, message))


@functools.cache
def tiny():
    """(model, tokenizer) of builtin:tiny-llama, built once; do not modify the model."""
    from trainers.models.tiny import build_tiny_llama

    return build_tiny_llama()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli(*args, stdin=None):
    """`python -m trainers ARGS`, run as the service runs it."""
    return subprocess.run([sys.executable, "-m", "trainers", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, input=stdin, timeout=120)  # fmt: skip


def rollout_of(texts, ended_with_eos, items=None):
    """A rollout whose responses are `texts` (EOS appended where they ended), right-padded.

    The prompts are those of `items` rendered as PPO and GRPO render them, left-padded; BOS alone without.
    """
    _, tokenizer = tiny()
    responses = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] * e
                 for t, e in zip(texts, ended_with_eos, strict=True)]  # fmt: skip
    prompts = [[tokenizer.bos_token_id]] * len(texts) if items is None else [
        p.ids for p in tokenize_prompts(items, tokenizer, max_prompt_length=1000)]  # fmt: skip
    return rollout_from_ids(prompts, responses, ended_with_eos)


def rollout_from_ids(prompts, responses, ended_with_eos):
    """A rollout of these prompt and response token ids, laid out as `generate` lays them out."""
    _, tokenizer = tiny()
    prompt, prompt_mask = left_pad(prompts, tokenizer.pad_token_id)
    width = max(len(r) for r in responses)
    ids = torch.full((len(responses), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(responses), width), dtype=torch.long)
    for i, r in enumerate(responses):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return Rollout(prompt_ids=prompt, prompt_mask=prompt_mask, response_ids=ids, response_mask=mask,
                   logprobs=torch.zeros(ids.shape), ended_with_eos=torch.tensor(ended_with_eos, dtype=torch.bool),
                   response_lengths=mask.sum(1), temperature=1.0)  # fmt: skip


def computer(reward, callbacks=None, *, policy_tokenizer=None, batch_size=16, **job):
    """The computer of a GRPO job on builtin:tiny-llama (whose tokenizer is the policy's by default)."""
    job = GRPOJob(base_model="builtin:tiny-llama", reward=reward, **job)
    callbacks = callbacks or RecordingCallbacks()
    return RewardComputer.from_job(job, policy_tokenizer=policy_tokenizer or tiny()[1], device=torch.device("cpu"),
                                   on_event=callbacks.on_event, batch_size=batch_size)  # fmt: skip
