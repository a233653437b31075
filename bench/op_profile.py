"""Where our GRPO or PPO step's CPU time goes, by operator, in the setting of `bench/trainers_vs_trl.py`.

    .venv/bin/python bench/op_profile.py --algo grpo      # or ppo; --steps, --warmup, --threads

Our trainer runs the benchmark's GRPO (4 prompts × G = 4 completions of 32 tokens per step) or PPO
(16 episodes and 8 optimizer steps per rollout) on the benchmark model, one torch thread, and
`torch.profiler` records every operator of the steps after warm-up (a PPO "step" is a rollout). The
profile splits a step's time into

- **matrix products**: ``aten::mm``, ``addmm``, ``bmm``, ``baddbmm`` (every linear layer, forward
  and backward, in sampling and in every pass; this core's rate for 1024² products,
  `measure_matmul_rate`, is printed beside);
- **attention**: the scaled-dot-product-attention kernels, forward and backward;
- **other operators**: the rest of ATen (element-wise ops, normalisation, softmax, copies, the
  optimizer);
- **outside operators**: the profiled wall time that no operator accounts for (Python: the
  modules' forward code, the trainer's loop, the profiler's own cost).

``--training-compile`` measures instead what fusing the operators of a training pass would buy: the
benchmark policy's forward and backward over 8 rows of 55–77 tokens (3 of them left-padded), eager
against ``torch.compile(model, dynamic=True)``, in CPU ms per pass after 3 warm-up passes (which hold
the compile), each in a fresh process.

The profiler slows a step (each operator is recorded; counting FLOPs as well slowed the small
element-wise operators several times over, so it does not), so its step time is not a benchmark
figure; the shares are what this script is for. Printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from bench.common import build_models, measure_matmul_rate, prompt_rows  # noqa: E402
from bench.rl_runs import GRPO, PPO, run_ours_grpo, run_ours_ppo  # noqa: E402

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


class OpProfile:
    """`torch.profiler` over `steps` steps after warm-up: `reset` starts it, the last one stops it; `finish` sums up."""

    def __init__(self, steps: int) -> None:
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self.steps = steps
        self.started = 0.0
        self.wall = 0.0

    def reset(self) -> None:
        """The end of warm-up: start recording."""
        self.profiler.__enter__()
        self.started = time.perf_counter()

    def per_step(self, steps: int) -> dict[str, float]:
        """After each recorded step: after the last, stop recording (the run's teardown is left out)."""
        if steps == self.steps:
            self.wall = time.perf_counter() - self.started
            self.profiler.__exit__(None, None, None)
        return {}

    def finish(self) -> dict[str, Any]:
        """Each part's ms per step and share of the wall time, the top operators, the matmul rate."""
        wall = self.wall
        events = self.profiler.key_averages()
        self_us = {e.key: e.self_cpu_time_total for e in events}
        matmul_us = sum(t for key, t in self_us.items() if key in MATMUL_OPS)
        attention_us = sum(t for key, t in self_us.items() if "scaled_dot_product" in key or "flash_attention" in key)
        ops_us = sum(self_us.values())
        parts = {
            "matrix products": matmul_us,
            "attention": attention_us,
            "other operators": ops_us - matmul_us - attention_us,
            "outside operators": 1e6 * wall - ops_us,
        }
        top = sorted(self_us.items(), key=lambda item: -item[1])[:10]
        return {
            "steps": self.steps,
            "profiled_ms_per_step": 1000 * wall / self.steps,
            "ms_per_step": {name: round(us / 1000 / self.steps, 1) for name, us in parts.items()},
            "share": {name: round(us / (1e6 * wall), 3) for name, us in parts.items()},
            "top_ops_ms_per_step": {key: round(us / 1000 / self.steps, 1) for key, us in top},
        }


def training_pass_ms(compiled: bool) -> dict[str, float]:
    """CPU ms per forward + backward of the benchmark policy, eager or compiled, and the warm-up's seconds."""
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(prefix="bench-ops-") as tmp:
        model = AutoModelForCausalLM.from_pretrained(build_models(Path(tmp))[0])
    forward = torch.compile(model, dynamic=True) if compiled else model
    generator = torch.Generator().manual_seed(0)

    def one_pass(length: int) -> None:
        ids = torch.randint(3, 250, (8, length), generator=generator)  # (8, T)
        mask = torch.ones(8, length, dtype=torch.long)
        mask[:3, :7] = 0  # left padding
        logits = forward(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
        logits.float().log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None]).mean().backward()

    start = time.perf_counter()
    for length in (60, 70, 80):
        one_pass(length)
    warmup = time.perf_counter() - start
    lengths = [55, 62, 66, 71, 58, 77, 64, 69] * 2
    cpu = time.process_time()
    for length in lengths:
        one_pass(length)
    return {"ms_per_pass": round(1000 * (time.process_time() - cpu) / len(lengths), 1), "warmup_s": round(warmup, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=("grpo", "ppo"), default="grpo")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps (default 15) or PPO rollouts (default 6)")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out first (default 5; PPO 2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--training-compile", action="store_true", help="eager against compiled training passes")
    parser.add_argument("--child", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(training_pass_ms(args.child == "compiled")))
        return
    if args.training_compile:
        runs = {}
        for mode in ("eager", "compiled"):
            command = [sys.executable, __file__, "--child", mode, "--threads", str(args.threads)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            runs[mode] = json.loads(out.strip().splitlines()[-1])
        speedup = round(runs["eager"]["ms_per_pass"] / runs["compiled"]["ms_per_pass"], 3)
        print(json.dumps({"name": "training_pass/compile", "threads": args.threads, "torch": torch.__version__}
                         | runs | {"speedup": speedup}, indent=1))  # fmt: skip
        return
    steps = args.steps or (15 if args.algo == "grpo" else 6)
    warmup = args.warmup or (5 if args.algo == "grpo" else 2)
    profile = OpProfile(steps - warmup)
    with tempfile.TemporaryDirectory(prefix="bench-ops-") as tmp:
        work = Path(tmp)
        build_models(work)
        per_step = GRPO["prompts"] if args.algo == "grpo" else PPO["prompts"]
        (work / "prompts.json").write_text(json.dumps(prompt_rows(steps * per_step, seed=3)))
        rate = measure_matmul_rate()
        run = run_ours_grpo if args.algo == "grpo" else run_ours_ppo
        run(work, seed=0, steps=steps, warmup=warmup, probe=profile)
    print(json.dumps({"name": f"{args.algo}/op_profile", "threads": args.threads, "torch": torch.__version__,
                      "fp32_matmul_gflop_per_s_1024": round(rate / 1e9, 1)} | profile.finish(), indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
