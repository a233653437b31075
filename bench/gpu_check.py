"""Every trainer a few steps in bf16 on a CUDA device: finite metrics, a falling loss, a loadable checkpoint.

    .venv/bin/python bench/gpu_check.py [--steps 8] [--device cuda|cpu] [--out bench/gpu_check.json]

The first thing to run on a GPU machine (`scripts/gpu-check.sh` prepares the venv and runs this).
Each of DPO, the reward model, GRPO and PPO trains `builtin:tiny-llama` saved in bf16 (as released
checkpoints are) with ``precision="bf16"`` through `trainers.run`, with the settings their unit tests
learn with. Checked, one line each (PASS/FAIL and the numbers):

- every reported metric is finite, and the run completed its steps;
- DPO and the reward model: the mean loss of the last third of the steps is below the first step's by
  at least `LOSS_MARGIN`; GRPO and PPO: the loss is finite (their rewards are printed, not checked:
  a few steps are too few to learn them);
- the final checkpoint loads with ``from_pretrained`` in the base model's type (bf16) and gives finite logits;
- the run's event says ``precision bf16`` and the device.

Then a DPO run with ``precision="auto"`` must resolve to bf16 where the GPU supports it (fp32 on the CPU),
and one with ``attn_implementation="flash_attention_2"`` runs when flash_attn is installed. With two GPUs
or more, the DPO check runs again on 2 processes (``python -m trainers dpo --processes 2``, torchrun and
NCCL), once with ``ddp`` and once with ``fsdp``: the same checks, and its last loss that of one process
(10%); with fewer it is skipped with a printed note. Results go
to ``--out`` as JSON; the exit status is 1 when any check failed, 2 when there is no CUDA device
(``--device cpu`` runs the same checks on the CPU, in bf16 autocast).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from trainers import DPOJob, GRPOJob, PPOJob, RewardModelJob, TrainingData  # noqa: E402  (torch-free)
from trainers.spec.callbacks import Callbacks  # noqa: E402

LOSS_MARGIN = 0.01
PROMPTS = [{"prompt": p} for p in ["Hello", "Say something", "Write", "Go", "Tell me", "Once", "Why", "Hi there"]]
CONTAINS_E = {"type": "string_check", "name": "has_e", "operation": "contains", "reference": "e"}
# The settings of the trainers' unit tests that learn on builtin:tiny-llama.
PAIRWISE = {"learning_rate": 1e-3, "batch_size": 8}
GRPO = {"learning_rate": 1e-2, "rollout_batch_size": 4, "num_generations": 8, "batch_size": 32,
        "max_new_tokens": 8, "max_prompt_length": 16, "max_length": 64}  # fmt: skip
PPO = {"learning_rate": 1e-2, "critic_learning_rate": 3e-3, "rollout_batch_size": 8, "batch_size": 4,
       "ppo_epochs": 1, "max_new_tokens": 6, "max_prompt_length": 16, "max_length": 64}  # fmt: skip
DEFAULT_OUT = Path(__file__).resolve().parent / "gpu_check.json"


class Recorder(Callbacks):
    """Keeps every metric and event; saves each checkpoint under ``root/checkpoint-<step>``."""

    def __init__(self, root: Path):
        self.root = root
        self.metrics: dict[int, dict[str, float]] = {}
        self.events: list[str] = []
        self.checkpoints: dict[int, Path] = {}

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics[step] = dict(metrics)

    def on_checkpoint(self, step: int, save: Callable[[Path], None], info: dict) -> None:
        directory = self.root / f"checkpoint-{step}"
        directory.mkdir(parents=True)
        save(directory)
        self.checkpoints[step] = directory

    def on_event(self, level: str, message: str) -> None:
        self.events.append(message)


class Report:
    """The checks made so far: printed as they come, written as JSON at the end."""

    def __init__(self) -> None:
        self.checks: list[dict[str, Any]] = []

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
        return bool(ok)

    @property
    def failed(self) -> int:
        return sum(not c["ok"] for c in self.checks)


def build_bf16_base(directory: Path) -> str:
    """builtin:tiny-llama saved in bf16 under `directory`; returns it as a base model reference."""
    import torch

    from trainers.models.tiny import build_tiny_llama

    model, tokenizer = build_tiny_llama()
    model.to(torch.bfloat16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def jobs(base: str, steps: int) -> dict[str, tuple[Any, TrainingData]]:
    """The job and data of each trainer, ``precision="bf16"``, `steps` optimizer steps."""
    from trainers.data.synthetic import uppercase_preference_rows

    pairs = TrainingData(train=uppercase_preference_rows(64, seed=0))
    prompts = TrainingData(train=PROMPTS)
    common = {"max_steps": steps, "precision": "bf16", "checkpoint_every": 1_000_000}
    return {
        "dpo": (DPOJob(base_model=base, seed=0, hyperparameters=PAIRWISE | common), pairs),
        "reward_model": (RewardModelJob(base_model=base, seed=0, hyperparameters=PAIRWISE | common), pairs),
        "grpo": (GRPOJob(base_model=base, seed=0, reward=CONTAINS_E, hyperparameters=GRPO | common), prompts),
        "ppo": (PPOJob(base_model=base, seed=0, reward=CONTAINS_E, hyperparameters=PPO | common), prompts),
    }


def load_checkpoint(directory: Path, kind: str) -> tuple[Any, bool]:
    """The checkpoint's model as ``from_pretrained`` loads it, and whether its logits on a probe are finite."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from trainers.models.checkpoint import MODEL_DIR

    loader = AutoModelForSequenceClassification if kind == "reward_model" else AutoModelForCausalLM
    model = loader.from_pretrained(directory / MODEL_DIR)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[257, 72, 101, 108, 108, 111]])).logits
    return model, bool(torch.isfinite(logits).all())


def run_one(report: Report, name: str, job: Any, data: TrainingData, root: Path, device: str) -> dict[str, float]:
    """Train one job and check it; returns its last metrics."""
    import trainers

    recorder = Recorder(root / name)
    started = time.perf_counter()
    try:
        result = trainers.run(job, data, recorder)
    except Exception as exc:  # a crash is a failed check, and the other trainers still run
        report.check(f"{name} runs", False, f"{type(exc).__name__}: {exc}")
        return {}
    seconds = time.perf_counter() - started
    steps = job.hyperparameters.max_steps
    report.check(f"{name} runs", result.status == "completed" and sorted(recorder.metrics) == list(range(1, steps + 1)),
                 f"{result.status} at step {result.step} of {steps} in {seconds:.1f} s")  # fmt: skip
    values = [v for m in recorder.metrics.values() for v in m.values()]
    report.check(f"{name} metrics finite", all(math.isfinite(v) for v in values), f"{len(values)} values")
    losses = [recorder.metrics[s]["train/loss"] for s in sorted(recorder.metrics)]
    if name in ("dpo", "reward_model") and losses:
        tail = losses[-max(1, len(losses) // 3) :]
        last = sum(tail) / len(tail)
        report.check(f"{name} loss falls", last < losses[0] - LOSS_MARGIN,
                     f"first {losses[0]:.4f}, mean of last {len(tail)} {last:.4f} (margin {LOSS_MARGIN})")  # fmt: skip
    elif losses:
        rewards = [recorder.metrics[s].get("reward/mean", recorder.metrics[s].get("objective/scores", math.nan))
                   for s in sorted(recorder.metrics)]  # fmt: skip
        report.check(
            f"{name} loss finite",
            all(math.isfinite(v) for v in losses),
            f"losses {[round(v, 4) for v in losses]}, reward {rewards[0]:.3f} -> {rewards[-1]:.3f}",
        )
    if recorder.checkpoints:
        import torch

        model, finite = load_checkpoint(recorder.checkpoints[max(recorder.checkpoints)], name)
        report.check(
            f"{name} checkpoint loads",
            model.dtype == torch.bfloat16 and finite,
            f"{type(model).__name__} in {model.dtype} (base: torch.bfloat16), finite logits {finite}",
        )
    else:
        report.check(f"{name} checkpoint loads", False, "no checkpoint was saved")
    check_precision_event(report, name, recorder.events, "bf16", device)
    return recorder.metrics.get(steps, {})


def check_precision_event(report: Report, name: str, events: list[str], precision: str, device: str) -> None:
    """The run reported the precision and device it resolved."""
    said = next((e for e in events if e.startswith("precision ")), "")
    ok = said.startswith(f"precision {precision}") and said.endswith(f"device {device}")
    report.check(f"{name} precision event", ok, repr(said) if said else "no 'precision ...' event")


def run_variant(report: Report, name: str, base: str, root: Path, device: str, **hp: Any) -> None:
    """A short DPO run with extra hyperparameters; checks it completes with finite metrics."""
    import trainers
    from trainers.data.synthetic import uppercase_preference_rows

    recorder = Recorder(root / name)
    job = DPOJob(base_model=base, seed=0, hyperparameters=PAIRWISE | {"max_steps": 2} | hp)
    try:
        result = trainers.run(job, TrainingData(train=uppercase_preference_rows(32, seed=1)), recorder)
    except Exception as exc:
        report.check(name, False, f"{type(exc).__name__}: {exc}")
        return
    finite = all(math.isfinite(v) for m in recorder.metrics.values() for v in m.values())
    report.check(f"{name} runs", result.status == "completed" and finite, f"{result.status}, finite metrics {finite}")
    if hp.get("precision") == "auto":
        import torch

        expected = "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        check_precision_event(report, name, recorder.events, expected, device)
    else:
        said = next((e for e in recorder.events if e.startswith("precision ")), "")
        report.check(f"{name} attention", f"attention {hp['attn_implementation']}" in said, repr(said))


def check_all(steps: int, device: str) -> tuple[Report, dict[str, Any]]:
    """Run every check on `device` (which `trainers` picks by itself: CUDA when visible)."""
    import torch

    from trainers.precision import flash_attention_installed

    report = Report()
    final: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        base = build_bf16_base(root / "base")
        for name, (job, data) in jobs(base, steps).items():
            final[name] = run_one(report, name, job, data, root, device)
        run_variant(report, "dpo precision auto", base, root, device, precision="auto")
        if flash_attention_installed():
            run_variant(report, "dpo flash-attn", base, root, device, precision="bf16",
                        attn_implementation="flash_attention_2")  # fmt: skip
        else:
            print("flash-attn: not installed", flush=True)
        gpus = torch.cuda.device_count() if device == "cuda" else 0
        if gpus >= 2:
            for strategy in ("ddp", "fsdp"):
                final[f"dpo 2 processes {strategy}"] = run_two_processes(report, base, root, steps, strategy,
                                                                          final.get("dpo", {}))  # fmt: skip
        else:
            print(f"2-process check: skipped ({gpus} GPU(s) visible, it needs 2)", flush=True)
    return report, final


def run_two_processes(report: Report, base: str, root: Path, steps: int, strategy: str,
                      one: dict[str, float]) -> dict[str, float]:  # fmt: skip
    """DPO on GPUs 0 and 1 through ``python -m trainers dpo --processes 2`` (torchrun, NCCL); checks it as `run_one`.

    The job is the 1-process DPO check's; its last loss must be that run's (`one`) to 10%: in bf16 the
    two runs round differently (each rank pads its half of a micro-batch to its own width, one process
    groups rows by length), and a few steps at this learning rate carry that apart by a few percent
    (2.6% after 4 steps on the CPU; in fp32 the losses agree to 1e-5).
    """
    import subprocess

    import torch

    from trainers.data.synthetic import uppercase_preference_rows

    name = f"dpo 2 processes {strategy}"
    folder = root / name.replace(" ", "-")
    folder.mkdir()
    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in uppercase_preference_rows(64, seed=0)))
    flags = {"max_steps": steps, "precision": "bf16", "checkpoint_every": 1_000_000} | PAIRWISE
    command = [sys.executable, "-m", "trainers", "dpo", "--data", str(data), "--base-model", base, "--output",
               str(folder / "out"), "--seed", "0", "--processes", "2", "--strategy", strategy]  # fmt: skip
    command += [x for k, v in flags.items() for x in ("--" + k.replace("_", "-"), str(v))]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                          env=os.environ | {"CUDA_VISIBLE_DEVICES": "0,1"}, timeout=600)  # fmt: skip
    seconds = time.perf_counter() - started
    metrics = {m.pop("step"): m for m in map(json.loads, (x for x in done.stdout.splitlines() if x.startswith("{")))}
    if not report.check(f"{name} runs", done.returncode == 0 and sorted(metrics) == list(range(1, steps + 1)),
                        f"exit {done.returncode}, steps {sorted(metrics)} in {seconds:.1f} s"
                        + ("" if done.returncode == 0 else f": {done.stderr[-1500:]}")):  # fmt: skip
        return {}
    values = [v for m in metrics.values() for v in m.values()]
    report.check(f"{name} metrics finite", all(math.isfinite(v) for v in values), f"{len(values)} values")
    losses = [metrics[s]["train/loss"] for s in sorted(metrics)]
    tail = losses[-max(1, len(losses) // 3) :]
    report.check(f"{name} loss falls", sum(tail) / len(tail) < losses[0] - LOSS_MARGIN,
                 f"first {losses[0]:.4f}, mean of last {len(tail)} {sum(tail) / len(tail):.4f}")  # fmt: skip
    if "train/loss" in one:
        report.check(f"{name} equals 1 process", math.isclose(losses[-1], one["train/loss"], rel_tol=0.1),
                     f"last loss {losses[-1]:.5f}, 1 process {one['train/loss']:.5f} (10%)")  # fmt: skip
    said = [line for line in done.stderr.splitlines() if line.startswith(("[info] precision", "[info] 2 processes"))]
    announced = f"[info] 2 processes, strategy {strategy}" in said
    resolved = any("precision bf16" in line and "device cuda" in line for line in said)
    report.check(f"{name} strategy event", announced and resolved, "; ".join(said))
    model, finite = load_checkpoint(folder / "out" / f"checkpoint-{steps}", "dpo")
    report.check(f"{name} checkpoint loads", model.dtype == torch.bfloat16 and finite,
                 f"{type(model).__name__} in {model.dtype}, finite logits {finite}")  # fmt: skip
    return metrics[steps]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps of each trainer (at least 3)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu hides every GPU, to exercise the checks without one")  # fmt: skip
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the results are written as JSON")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA: trainers then pick the CPU
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"bench/gpu_check.py needs a CUDA device, and torch {torch.__version__} sees none "
              "(torch.cuda.is_available() is False). Run it on a GPU machine, or pass --device cpu.",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.device == "cpu":
        torch.set_num_threads(1)  # tiny-llama's matrices gain nothing from intra-op threads
    from bench.common import machine

    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device: {name}", flush=True)
    started = time.perf_counter()
    report, final = check_all(max(3, args.steps), args.device)
    seconds = time.perf_counter() - started
    print(f"{len(report.checks) - report.failed} of {len(report.checks)} checks passed in {seconds:.1f} s", flush=True)
    args.out.write_text(json.dumps({
        "device": name, "machine": machine(), "steps": max(3, args.steps), "seconds": round(seconds, 1),
        "passed": report.failed == 0, "checks": report.checks, "final_metrics": final,
    }, indent=2) + "\n")  # fmt: skip
    print(f"results written to {args.out}", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
