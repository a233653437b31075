"""Our trainers against Hugging Face TRL's on the same model, data, hyperparameters and machine, in one run.

    .venv/bin/python bench/trainers_vs_trl.py --algo dpo|reward_model|grpo|rloo|ppo|all [--reps 3] [--steps 40]

Each repetition runs each trainer in its own subprocess (so peak RSS is that trainer's alone), in
alternating order (ours first on even repetitions, TRL's first on odd ones) so that load from other
processes on the machine falls on both alike. Figures are medians over the repetitions; ratios are
the medians of the per-repetition ours/TRL ratios. Repetition r uses seed r for both trainers.

Both trainers start from the same weights (`bench.common.build_models`), train on the same rows
(`bench.common.preference_rows`) for the same number of steps of 8 pairs, fp32, AdamW at a
constant learning rate, gradients clipped to norm 1. TRL runs in its fastest configuration for
this setup: reference log-probs precomputed, no gradient checkpointing, no evaluation or saving
during training, logging every 10 steps. Samples/s and tokens/s are measured over the steps after
`--warmup`; tokens are real (non-padding) tokens; FLOP/s counts the model FLOPs of those real
tokens (forward and backward, `bench.common.forward_flops`) and is also given as a fraction of
this machine's fp32 matmul rate, measured in the same run. Final metrics are computed on held-out
pairs by `bench.common`'s plain judge, not by either trainer.

Results go to ``bench/results.json`` (merged by benchmark name) and are printed as a table.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from bench.common import (  # noqa: E402
    MAX_LENGTH,
    MAX_PROMPT_LENGTH,
    build_models,
    dpo_judge,
    forward_flops,
    machine,
    measure_matmul_rate,
    preference_rows,
    prompt_rows,
    reward_judge,
    tokenize_rows,
)
from bench.rl_runs import (  # noqa: E402
    GRPO,
    LEARNING_RATE,
    LOG_EVERY,
    PPO,
    StepClock,
    memory,
    run_ours_grpo,
    run_ours_ppo,
    run_trl_grpo,
    run_trl_ppo,
)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_JSON = BENCH_DIR / "results.json"
BATCH_SIZE = 8
BETA = 0.1
EVAL_ROWS = 128
PPO_TRL_VERSION = "1.12.0"
PPO_VENV = BENCH_DIR / ".venv-trl-ppo"
COMPILED = "ours+compiled"  # ours with compile_generation: true (--compile-generation)


# --- children: one trainer, one run --------------------------------------------------------------


def _step_cost(config, lengths: list[int], algo: str) -> tuple[int, float]:
    """Real tokens and training FLOPs (forward + backward = 3 forwards) of one step's rows."""
    return sum(lengths), 3 * forward_flops(config, lengths, head=algo == "dpo")


def run_ours(algo: str, work: Path, seed: int, steps: int, warmup: int, device: str = "cpu") -> dict[str, Any]:
    """Train with our library through `trainers.run`, timing each step from its metrics callback."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    import trainers
    from trainers.data.batching import BatchOrder

    rows = json.loads((work / "train.json").read_text())[: steps * BATCH_SIZE]
    eval_rows = json.loads((work / "eval.json").read_text())
    model_dir = work / ("policy" if algo == "dpo" else "reward_model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = [(len(p) + len(c), len(p) + len(r)) for p, c, r in tokenize_rows(rows, tokenizer)]
    config = AutoModelForCausalLM.from_pretrained(model_dir).config if algo == "dpo" else None
    config = config or AutoModelForSequenceClassification.from_pretrained(model_dir).config
    order = BatchOrder(num_rows=len(rows), batch_size=BATCH_SIZE, seed=seed)
    clock = StepClock()
    out_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"ours-{algo}-{seed}-"))  # the final checkpoint
    losses: dict[int, float] = {}

    class Timing(trainers.Callbacks):
        def on_metrics(self, step, metrics):
            clock.mark()
            step_lengths = [t for i in order.step_indices(step) for t in lengths[i]]
            tokens, flops = _step_cost(config, step_lengths, algo)
            clock.tokens.append(tokens)
            clock.flops.append(flops)
            losses[step] = metrics["train/loss"]

        def on_checkpoint(self, step, save, info):
            save(out_dir)

    common = {"learning_rate": LEARNING_RATE[algo], "batch_size": BATCH_SIZE, "max_steps": steps,
              "max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH, "checkpoint_every": 10**6}  # fmt: skip
    if algo == "dpo":
        job = trainers.DPOJob(base_model=str(model_dir), seed=seed, hyperparameters={**common, "beta": BETA})
    else:
        job = trainers.RewardModelJob(
            base_model=str(model_dir), seed=seed, hyperparameters={**common, "reward_stats_rows": 64}
        )
    start = time.perf_counter()
    trainers.run(job, trainers.TrainingData(train=rows), Timing())
    result = clock.rates(warmup, BATCH_SIZE) | memory(device) | {"setup_s": clock.times[0] - start}
    last = sorted(losses)[-LOG_EVERY:]
    result["final"] = {"train_loss_last10": statistics.fmean(losses[s] for s in last)}
    if algo == "dpo":
        model = AutoModelForCausalLM.from_pretrained(out_dir / "model")
        result["final"] |= dpo_judge(model, model_dir, eval_rows, tokenizer, BETA)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(out_dir / "model")
        result["final"] |= reward_judge(model, eval_rows, tokenizer)
    return result


def run_trl(algo: str, work: Path, seed: int, steps: int, warmup: int, device: str = "cpu") -> dict[str, Any]:
    """Train with TRL's trainer in its fastest configuration here, timing each step from a callback."""
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    rows = json.loads((work / "train.json").read_text())[: steps * BATCH_SIZE]
    eval_rows = json.loads((work / "eval.json").read_text())
    model_dir = work / ("policy" if algo == "dpo" else "reward_model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    clock = StepClock()
    pending: list[list[int]] = []  # real lengths of the rows of the step in progress

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.mark()
            tokens, flops = _step_cost(model.config, pending, algo)
            clock.tokens.append(tokens)
            clock.flops.append(flops)
            pending.clear()

    def record(inputs) -> None:
        pending.extend(inputs["attention_mask"].sum(dim=1).tolist())

    common = {
        "output_dir": tempfile.mkdtemp(dir=work, prefix=f"trl-{algo}-{seed}-"),
        "per_device_train_batch_size": BATCH_SIZE,
        "gradient_accumulation_steps": 1, "max_steps": steps, "learning_rate": LEARNING_RATE[algo],
        "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
        "max_length": MAX_LENGTH, "bf16": device == "cuda", "fp16": False, "gradient_checkpointing": False,
        "logging_steps": LOG_EVERY, "save_strategy": "no", "eval_strategy": "no", "report_to": "none",
        "disable_tqdm": True, "seed": seed, "dataloader_num_workers": 0, "use_cpu": device == "cpu",
    }  # fmt: skip
    start = time.perf_counter()
    if algo == "dpo":

        class TimedDPO(trl.DPOTrainer):
            def training_step(self, model, inputs, *args, **kwargs):
                record(inputs)
                return super().training_step(model, inputs, *args, **kwargs)

        model = AutoModelForCausalLM.from_pretrained(model_dir)
        args = trl.DPOConfig(**common, beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=True)
        trainer = TimedDPO(model=model, args=args, train_dataset=Dataset.from_list(rows),
                           processing_class=tokenizer, callbacks=[Timing()])  # fmt: skip
    else:

        class TimedReward(trl.RewardTrainer):
            def training_step(self, model, inputs, *args, **kwargs):
                record(inputs)
                return super().training_step(model, inputs, *args, **kwargs)

        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
        args = trl.RewardConfig(**common)
        trainer = TimedReward(model=model, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer, callbacks=[Timing()])  # fmt: skip
    trainer.train()
    result = clock.rates(warmup, BATCH_SIZE) | memory(device) | {"setup_s": clock.times[0] - start}
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result["final"] = {"train_loss_last10": logged[-1]}
    if algo == "dpo":
        result["final"] |= dpo_judge(trainer.model, model_dir, eval_rows, tokenizer, BETA)
    else:
        result["final"] |= reward_judge(trainer.model, eval_rows, tokenizer)
    result["trl_version"] = trl.__version__
    return result


# --- parent: the comparison -----------------------------------------------------------------------


def _child(
    trainer: str, algo: str, work: Path, seed: int, steps: int, warmup: int, threads: int, device: str = "cpu",
    split: bool = False,
) -> dict[str, Any]:
    script, python = Path(__file__), sys.executable
    if trainer == "trl" and algo == "ppo":
        python = str(PPO_VENV / "bin" / "python")
    if trainer.startswith("ours@"):  # our library as another checkout has it: run that checkout's copy
        script = Path(trainer.partition("@")[2]) / "bench" / script.name
    child = trainer.partition("@")[0].partition("+")[0]  # ours, ours@<checkout>, ours+compiled: "ours"
    cmd = [python, str(script), "--child", child, "--algo", algo, "--work", str(work),
           "--seed", str(seed), "--steps", str(steps), "--warmup", str(warmup), "--device", device]  # fmt: skip
    cmd += ["--split"] if split and trainer.startswith("ours") else []
    cmd += ["--compile-generation"] if trainer == COMPILED else []
    env = os.environ | ({"TORCHINDUCTOR_CACHE_DIR": str(work / "inductor")} if trainer == COMPILED else {}) | {
        "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
    }  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{trainer} {algo} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(
    algo: str, work: Path, reps: int, steps: int, warmup: int, matmul_rate: float, threads: int, others: list[Path],
    device: str = "cpu", split: bool = False, compiled: bool = False,
) -> list[dict[str, Any]]:
    """Run both trainers `reps` times, alternating who goes first; return one benchmark per figure.

    `others` are further checkouts of this repository whose library runs as ``ours@<checkout>`` in
    the same rotation: a change's effect is measured side by side with TRL's and ours. With
    `compiled`, ours also runs with ``compile_generation: true`` (`COMPILED`), its compiled graphs in
    an inductor cache of this run (empty at its first run: a cold compile, then warm ones).
    """
    variants = [COMPILED] * compiled + [f"ours@{tree}" for tree in others]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ("ours", "trl", *variants)}
    for rep in range(reps):
        rotation = ["ours", "trl", *variants]
        rotation = rotation[rep % len(rotation) :] + rotation[: rep % len(rotation)]
        for trainer in rotation:
            result = _child(trainer, algo, work, rep, steps, warmup, threads, device, split)
            runs[trainer].append(result)
            cpu = f" ({result['samples_per_cpu_s']:.2f} per CPU s)" if "samples_per_cpu_s" in result else ""
            print(f"  rep {rep} {trainer:>4}: {result['samples_per_s']:.2f} samples/s{cpu}, "
                  f"{result['peak_rss_mib']:.0f} MiB, {json.dumps(result['final'])}", flush=True)  # fmt: skip
            if "split_ms" in result:
                split = ", ".join(f"{k} {v:.1f}" for k, v in result["split_ms"].items())
                print(f"    ms per step: {split}", flush=True)
    figures = [
        ("samples_per_s", "samples/s", "training pairs per second after warm-up (higher is better)"),
        *([("samples_per_cpu_s", "samples/CPU s", "samples per second of the process's CPU time after warm-up")]
          * all("samples_per_cpu_s" in r for r in runs["ours"] + runs["trl"])),
        ("tokens_per_s", "tokens/s", "real (non-padding) tokens per second after warm-up"),
        ("flops_per_s", "FLOP/s", "model FLOPs of the real tokens per second (forward + backward)"),
        ("peak_rss_mib", "MiB", "peak resident memory of the training process (lower is better)"),
        *([("peak_gpu_mib", "MiB", "peak GPU memory allocated by torch (lower is better)")] * (device == "cuda")),
        ("setup_s", "s", "from the start of the run to the end of the first step (loading, tokenising, "
                         "reference pass)"),
        *([("e2e_samples_per_s", "samples/s", "samples over the whole run, setup included")]
          * all("e2e_samples_per_s" in r for r in runs["ours"] + runs["trl"])),
    ]  # fmt: skip
    out = []
    for key, units, what in figures:
        ours = [r[key] for r in runs["ours"]]
        theirs = [r[key] for r in runs["trl"]]
        out.append({
            "name": f"{algo}/{key}", "what": what, "units": units,
            "ours": statistics.median(ours), "trl": statistics.median(theirs),
            "ratio": statistics.median(a / b for a, b in zip(ours, theirs, strict=True)),
            "ours_runs": ours, "trl_runs": theirs,
        })  # fmt: skip
    out.append({
        "name": f"{algo}/mfu", "what": "achieved model FLOP/s as a fraction of the measured fp32 matmul rate",
        "units": "fraction", "ours": statistics.median(r["flops_per_s"] for r in runs["ours"]) / matmul_rate,
        "trl": statistics.median(r["flops_per_s"] for r in runs["trl"]) / matmul_rate,
        "ratio": statistics.median(
            a["flops_per_s"] / b["flops_per_s"] for a, b in zip(runs["ours"], runs["trl"], strict=True)
        ),
        "matmul_flops_per_s": matmul_rate,
    })  # fmt: skip
    for metric in runs["ours"][0]["final"]:
        ours = [r["final"][metric] for r in runs["ours"]]
        theirs = [r["final"][metric] for r in runs["trl"]]
        out.append({
            "name": f"{algo}/final/{metric}", "what": "final metric, median over seeds (runs: one per seed)",
            "units": "", "ours": statistics.median(ours), "trl": statistics.median(theirs),
            "ratio": statistics.median(ours) / statistics.median(theirs) if statistics.median(theirs) else None,
            "ours_runs": ours, "trl_runs": theirs,
        })  # fmt: skip
    for variant in variants:
        for key in ("samples_per_s", "samples_per_cpu_s", "tokens_per_s", "peak_rss_mib", "setup_s",
                    "e2e_samples_per_s"):
            if not all(key in r for r in runs[variant] + runs["trl"]):
                continue
            theirs = [r[key] for r in runs["trl"]]
            values = [r[key] for r in runs[variant]]
            out.append({
                "name": f"{algo}/{key}@{_variant_label(variant)}", "units": "",
                "what": f"{key} of our library at another commit, same run",
                "ours": statistics.median(values), "trl": statistics.median(theirs),
                "ratio": statistics.median(a / b for a, b in zip(values, theirs, strict=True)),
                "ours_runs": values, "trl_runs": theirs,
            })  # fmt: skip
    out += split_entries(algo, runs, variants)
    trl_version = runs["trl"][0]["trl_version"]
    commit = _commit(BENCH_DIR.parent)
    return [entry | {"trl_version": trl_version, "ours_commit": commit} for entry in out]


def split_entries(algo: str, runs: dict[str, list[dict[str, Any]]], variants: list[str]) -> list[dict[str, Any]]:
    """Medians of each phase's ms per step (``--split``), ours and each other checkout's; TRL has none."""
    out = []
    for name in ("ours", *variants):
        splits = [r["split_ms"] for r in runs[name] if "split_ms" in r]
        suffix = "" if name == "ours" else f"@{_variant_label(name)}"
        for phase in splits[0] if splits else ():
            values = [s[phase] for s in splits]
            out.append({
                "name": f"{algo}/split/{phase}{suffix}", "units": "ms", "what": f"ms per step in {phase} (--split)",
                "ours": statistics.median(values), "trl": float("nan"), "ratio": None, "ours_runs": values,
            })  # fmt: skip
    return out


def _variant_label(variant: str) -> str:
    """``compiled`` for `COMPILED`, else the commit of the checkout ``ours@<checkout>`` runs."""
    return "compiled" if variant == COMPILED else _commit(Path(variant.partition("@")[2]))


def _commit(tree: Path) -> str:
    """The short commit of a checkout, with ``+`` when its working tree has changes."""
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "trainers"],
                           capture_output=True, text=True)  # fmt: skip
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def write_results(entries: list[dict[str, Any]], command: str, info: dict[str, Any]) -> None:
    """Merge `entries` into bench/results.json by name, each with its command and machine."""
    existing = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else []
    names = {e["name"] for e in entries}
    merged = [e for e in existing if e["name"] not in names]
    merged += [e | {"command": command, "machine": info} for e in entries]
    RESULTS_JSON.write_text(json.dumps(sorted(merged, key=lambda e: e["name"]), indent=1) + "\n")


def record_service_figures(entries: list[dict[str, Any]], command: str) -> None:
    """Merge figures that have no TRL counterpart into results.json, and print them as a table."""
    from bench.common import machine

    write_results(entries, command, machine())
    print("| figure | value |\n|---|---|")
    for e in entries:
        print(f"| {e['name']} | {e['ours']:.4g} {e['units']} |")


def print_table(entries: list[dict[str, Any]]) -> None:
    """A Markdown table of the figures, as RESULTS.md shows them."""
    print("| figure | ours | TRL | ours / TRL |\n|---|---|---|---|")
    for e in entries:
        ratio = "" if e["ratio"] is None else f"{e['ratio']:.2f}"
        print(f"| {e['name']} ({e['units']}) | {_fmt(e['ours'])} | {_fmt(e['trl'])} | {ratio} |")


def _fmt(value: float) -> str:
    if abs(value) >= 1e6:
        return f"{value:.3g}"
    return f"{value:.4g}"


def setup_ppo_venv() -> None:
    """Make PPO_VENV: TRL `PPO_TRL_VERSION` with this machine's torch, transformers and pydantic versions."""
    import pydantic
    import transformers

    subprocess.run([sys.executable, "-m", "venv", str(PPO_VENV)], check=True)
    pins = [f"torch=={torch.__version__.split('+')[0]}", f"trl=={PPO_TRL_VERSION}",
            f"transformers=={transformers.__version__}", f"pydantic=={pydantic.__version__}"]  # fmt: skip
    subprocess.run([str(PPO_VENV / "bin" / "pip"), "install", *pins], check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", default="all", choices=["dpo", "reward_model", "grpo", "rloo", "ppo", "all"])
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each trainer (seeds 0..reps-1)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of 8 pairs per run")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the rates")
    parser.add_argument("--ppo-rollouts", type=int, default=10, help="PPO rollouts per run (2 left out as warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every trainer process")
    parser.add_argument("--also", type=Path, action="append", default=[],
                        help="another checkout of this repository whose trainers join the rotation")  # fmt: skip
    parser.add_argument("--no-parity", action="store_true", help="skip the loss parity checks")
    parser.add_argument("--compile-generation", action="store_true",
                        help="GRPO, RLOO, PPO: ours also with compile_generation: true, same rotation")  # fmt: skip
    parser.add_argument("--split", action="store_true",
                        help="GRPO, RLOO, PPO: also time our step's phases (bench/step_split.py)")  # fmt: skip
    parser.add_argument("--setup-ppo-venv", action="store_true",
                        help=f"make {PPO_VENV.name}: TRL {PPO_TRL_VERSION}, the newest with a PPO trainer")  # fmt: skip
    parser.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.algo in ("grpo", "rloo", "ppo"):
            run = {("ours", "grpo"): run_ours_grpo, ("trl", "grpo"): run_trl_grpo, ("ours", "rloo"): run_ours_grpo,
                   ("trl", "rloo"): run_trl_grpo, ("ours", "ppo"): run_ours_ppo,
                   ("trl", "ppo"): run_trl_ppo}[args.child, args.algo]  # fmt: skip
            options = {"algo": args.algo} if args.algo != "ppo" else {}
            options |= {"split": True} if args.split else {}
            options |= {"compile_generation": True} if args.compile_generation else {}
            print(json.dumps(run(args.work, args.seed, args.steps, args.warmup, args.device, **options)))
            return
        run = run_ours if args.child == "ours" else run_trl
        print(json.dumps(run(args.algo, args.work, args.seed, args.steps, args.warmup, args.device)))
        return

    command = "python bench/trainers_vs_trl.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.setup_ppo_venv:
        setup_ppo_venv()
        return
    algos = ["dpo", "reward_model", "grpo", "rloo", "ppo"] if args.algo == "all" else [args.algo]
    if "ppo" in algos and not (PPO_VENV / "bin" / "python").exists():
        sys.exit(f"ppo: TRL's PPO runs from {PPO_VENV}; make it first with --setup-ppo-venv")
    torch.set_num_threads(args.threads)
    info = machine()
    entries: list[dict[str, Any]] = []
    if not args.no_parity:
        from bench.parity import run_all
        from bench.parity_variants import run_all as run_all_variants

        entries += run_all() + run_all_variants()
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        work = Path(tmp)
        build_models(work)
        (work / "train.json").write_text(json.dumps(preference_rows(args.steps * BATCH_SIZE, seed=1)))
        (work / "eval.json").write_text(json.dumps(preference_rows(EVAL_ROWS, seed=2)))
        prompts = max(args.steps * GRPO["prompts"], args.ppo_rollouts * PPO["prompts"])
        (work / "prompts.json").write_text(json.dumps(prompt_rows(prompts, seed=3)))
        matmul_rate = measure_matmul_rate()
        print(f"fp32 matmul rate: {matmul_rate / 1e9:.1f} GFLOP/s", flush=True)
        for algo in algos:
            print(f"{algo}:", flush=True)
            steps, warmup = (args.ppo_rollouts, 2) if algo == "ppo" else (args.steps, args.warmup)
            others = args.also
            entries += compare(algo, work, args.reps, steps, warmup, matmul_rate, args.threads, others,
                               split=args.split and algo in ("grpo", "rloo", "ppo"),
                               compiled=args.compile_generation and algo in ("grpo", "rloo", "ppo"))  # fmt: skip
        matmul_after = measure_matmul_rate()
        print(f"fp32 matmul rate after the runs: {matmul_after / 1e9:.1f} GFLOP/s", flush=True)
    write_results(entries, command, info)
    print_table(entries)


if __name__ == "__main__":
    main()
