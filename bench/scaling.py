"""One DPO job on two processes against one, on the CPU: throughput at the same global batch, and FSDP2's memory.

    .venv/bin/python bench/scaling.py [--reps 3] [--steps 30] [--warmup 5] [--out bench/scaling.json]

Throughput: the benchmark model of `bench/trainers_vs_trl.py` (`bench.common.build_models`: tiny-llama
scaled to 4 layers, hidden 256, 3.0M parameters) trains DPO through `trainers.run` on the same rows with
the same global batch of 8 pairs, fp32, as

- ``1 process``: one process, one torch thread;
- ``1 process, padded``: the same, with one padded forward per micro-batch as each rank of several runs
  (no length groups: `trainers.dpo.bucket_overhead_tokens` answers None), which separates the cost of
  padding from that of communication;
- ``2 processes ddp`` and ``2 processes fsdp``: torchrun (`trainers.distributed.launch.torchrun_command`),
  gloo, one thread each, each rank taking half of every micro-batch.

Every variant runs once per repetition in rotation (who goes first changes each repetition), each in
its own processes, so load from elsewhere on the machine falls on all alike. Pairs/s and real
(non-padding) tokens/s are taken over the steps after `--warmup`, from rank 0's metrics callback;
a figure is the median over repetitions, a ratio the median of the per-repetition ratios to
``1 process``.

Memory: each rank's parameters and AdamW state after one optimizer step, counted tensor by tensor
(the local shard of every parameter and of every optimizer state tensor, as FSDP2 holds them after
`trainers.distributed.sharding.parallelize`), on one process and on each of two ranks with ``fsdp``
and ``ddp``; and each rank's peak RSS. Results are printed as a table and written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from bench.common import (  # noqa: E402
    MAX_LENGTH,
    MAX_PROMPT_LENGTH,
    build_models,
    machine,
    peak_rss_mib,
    preference_rows,
    tokenize_rows,
)
from bench.trainers_vs_trl import BATCH_SIZE, BETA, LEARNING_RATE  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "scaling.json"
# name → (processes, strategy, rows grouped by length on one process); one torch thread per process
VARIANTS = {
    "1 process": (1, "auto", True),
    "1 process, padded": (1, "auto", False),
    "2 processes ddp": (2, "ddp", True),
    "2 processes fsdp": (2, "fsdp", True),
}
BASELINE = "1 process"


# --- children: one rank of one run ----------------------------------------------------------------


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def child_throughput(work: Path, out: Path, processes: int, strategy: str, steps: int, warmup: int,
                     padded: bool = False) -> None:  # fmt: skip
    """Train DPO through `trainers.run`; rank 0 writes pairs/s and tokens/s after `warmup` steps to `out`.

    `padded`: one padded forward per micro-batch, as on several ranks, instead of forwards by length group.
    """
    import torch
    from transformers import AutoTokenizer

    import trainers
    import trainers.dpo
    from trainers.data.batching import BatchOrder

    if padded:
        trainers.dpo.bucket_overhead_tokens = lambda device_type: None  # what `train_dpo` uses on several ranks

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = json.loads((work / "train.json").read_text())[: steps * BATCH_SIZE]
    tokenizer = AutoTokenizer.from_pretrained(work / "policy")
    tokens = [len(p) * 2 + len(c) + len(r) for p, c, r in tokenize_rows(rows, tokenizer)]
    order = BatchOrder(num_rows=len(rows), batch_size=BATCH_SIZE, seed=0)
    times: list[float] = []
    losses: dict[int, float] = {}

    class Timing(trainers.Callbacks):
        def on_metrics(self, step, metrics):
            times.append(time.perf_counter())
            losses[step] = metrics["train/loss"]

    job = trainers.DPOJob(
        base_model=str(work / "policy"), seed=0, processes=processes, strategy=strategy,
        hyperparameters={"learning_rate": LEARNING_RATE["dpo"], "batch_size": BATCH_SIZE, "max_steps": steps,
                         "max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH, "beta": BETA,
                         "checkpoint_every": 10**6},
    )  # fmt: skip
    start = time.perf_counter()
    trainers.run(job, trainers.TrainingData(train=rows), Timing())
    if rank() == 0:
        elapsed = times[-1] - times[warmup - 1]
        measured = range(warmup + 1, steps + 1)
        out.write_text(json.dumps({
            "pairs_per_s": len(measured) * BATCH_SIZE / elapsed,
            "tokens_per_s": sum(tokens[i] for s in measured for i in order.step_indices(s)) / elapsed,
            "setup_s": times[0] - start, "losses": losses, "peak_rss_mib_rank0": peak_rss_mib(),
        }))  # fmt: skip


def child_memory(work: Path, out: Path, strategy: str) -> None:
    """One AdamW step of the benchmark model; each rank writes the bytes of its parameters and optimizer state."""
    import torch
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    from trainers.distributed.ranks import device_of, init_ranks
    from trainers.distributed.sharding import parallelize

    torch.set_num_threads(1)
    ranks = init_ranks()
    model = AutoModelForCausalLM.from_pretrained(work / "policy")
    model.train()
    if ranks.distributed:
        parallelize(model, ranks, strategy, device_of(ranks))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(3, 200, (4, 64), generator=torch.Generator().manual_seed(0))  # (B, T)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    def local_bytes(tensor: torch.Tensor) -> int:
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        return local.numel() * local.element_size()

    parameters = sum(local_bytes(p) for p in model.parameters())
    state = sum(local_bytes(v) for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    (out.parent / f"{out.stem}-rank{ranks.rank}.json").write_text(json.dumps({
        "rank": ranks.rank, "parameter_bytes": parameters, "optimizer_bytes": state,
        "peak_rss_mib": peak_rss_mib(),
    }))  # fmt: skip
    if ranks.distributed:
        torch.distributed.destroy_process_group()


# --- parent: the comparison -----------------------------------------------------------------------


def launch(args: list[str], processes: int, threads: int) -> None:
    """Run this script with `args` as one process, or as `processes` ranks under torchrun."""
    from trainers.distributed.launch import torchrun_command

    program = [str(Path(__file__).resolve()), *args]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT),
                        "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    if processes == 1:
        command = [sys.executable, *program]
    else:
        command, extra = torchrun_command(program, processes=processes)
        env |= extra
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} on {processes} processes failed:\n{done.stderr[-4000:]}")


def throughput(work: Path, reps: int, steps: int, warmup: int) -> dict[str, list[dict[str, Any]]]:
    """Every variant `reps` times, in rotation; their results by variant."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            processes, strategy, grouped = VARIANTS[name]
            out = work / f"throughput-{rep}-{processes}-{strategy}-{grouped}.json"
            child = ["--child", "throughput", "--work", str(work), "--result", str(out), "--processes", str(processes),
                     "--strategy", strategy, "--steps", str(steps), "--warmup", str(warmup)]  # fmt: skip
            launch(child + ([] if grouped else ["--padded"]), processes, 1)
            result = json.loads(out.read_text())
            runs[name].append(result)
            print(f"  rep {rep} {name:>22}: {result['pairs_per_s']:.2f} pairs/s, {result['tokens_per_s']:.0f} "
                  f"tokens/s, set-up {result['setup_s']:.1f} s", flush=True)  # fmt: skip
    return runs


def memory(work: Path) -> dict[str, list[dict[str, Any]]]:
    """Each rank's parameter and optimizer bytes after one step: one process, then two with fsdp and with ddp."""
    found = {}
    for name, processes, strategy in (("1 process", 1, "fsdp"), ("2 processes fsdp", 2, "fsdp"),
                                      ("2 processes ddp", 2, "ddp")):  # fmt: skip
        out = work / f"memory-{processes}-{strategy}.json"
        launch(["--child", "memory", "--work", str(work), "--result", str(out), "--strategy", strategy], processes, 1)
        found[name] = [json.loads((work / f"{out.stem}-rank{r}.json").read_text()) for r in range(processes)]
    return found


def summarise(runs: dict[str, list[dict[str, Any]]], mem: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The figures: per variant, pairs/s and tokens/s with their ratio to one process; memory per rank."""
    rows = []
    base = runs[BASELINE]
    for name, results in runs.items():
        rows.append({
            "variant": name,
            "pairs_per_s": statistics.median(r["pairs_per_s"] for r in results),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
            "ratio": statistics.median(r["pairs_per_s"] / b["pairs_per_s"] for r, b in zip(results, base, strict=True)),
            "runs_pairs_per_s": [r["pairs_per_s"] for r in results],
            "peak_rss_mib_rank0": statistics.median(r["peak_rss_mib_rank0"] for r in results),
            "max_loss_rel_diff": max(abs(r["losses"][s] - b["losses"][s]) / abs(b["losses"][s])
                                     for r, b in zip(results, base, strict=True) for s in b["losses"]),
        })  # fmt: skip
    one = mem["1 process"][0]
    one_bytes = one["parameter_bytes"] + one["optimizer_bytes"]
    for name, ranks in mem.items():
        top = max(r["parameter_bytes"] + r["optimizer_bytes"] for r in ranks)
        rows.append({"variant": f"memory: {name}", "per_rank": ranks, "peak_state_bytes": top,
                     "fraction_of_one_process": top / one_bytes})  # fmt: skip
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| variant | pairs/s | tokens/s | ÷ 1 process | runs (pairs/s) | losses: largest relative difference "
          "|\n|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        if "pairs_per_s" in r:
            runs = ", ".join(f"{v:.2f}" for v in r["runs_pairs_per_s"])
            print(f"| {r['variant']} | {r['pairs_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['ratio']:.2f} | {runs} | "
                  f"{r['max_loss_rel_diff']:.1e} |")
    print("\n| memory after one step | parameters + AdamW state, largest rank (MiB) | ÷ 1 process | per rank "
          "(parameters; optimizer; peak RSS MiB) |\n|---|---|---|---|")  # fmt: skip
    for r in rows:
        if "per_rank" in r:
            per = "; ".join(f"rank {x['rank']}: {x['parameter_bytes'] / 2**20:.2f} + {x['optimizer_bytes'] / 2**20:.2f}"
                            f", RSS {x['peak_rss_mib']:.0f}" for x in r["per_rank"])  # fmt: skip
            print(f"| {r['variant'].removeprefix('memory: ')} | {r['peak_state_bytes'] / 2**20:.2f} | "
                  f"{r['fraction_of_one_process']:.3f} | {per} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each variant")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of 8 pairs per run")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the rates")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the figures are written as JSON")
    parser.add_argument("--child", choices=["throughput", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--padded", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "throughput":
        child_throughput(args.work, args.result, args.processes, args.strategy, args.steps, args.warmup, args.padded)
        return
    if args.child == "memory":
        child_memory(args.work, args.result, args.strategy)
        return

    command = "python bench/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        work = Path(tmp)
        build_models(work)
        (work / "train.json").write_text(json.dumps(preference_rows(args.steps * BATCH_SIZE, seed=1)))
        print("throughput (DPO, global batch 8):", flush=True)
        runs = throughput(work, args.reps, args.steps, args.warmup)
        mem = memory(work)
    rows = summarise(runs, mem)
    seconds = time.perf_counter() - started
    args.out.write_text(json.dumps({"command": command, "machine": machine(), "seconds": round(seconds, 1),
                                    "figures": rows}, indent=1) + "\n")  # fmt: skip
    print_table(rows)
    print(f"\n{seconds:.0f} s; written to {args.out}", flush=True)


if __name__ == "__main__":
    main()
