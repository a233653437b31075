"""DPO and GRPO, ours against TRL's, on a CUDA device with a randomly initialised ~0.5B-parameter model.

    .venv/bin/python bench/gpu.py [--algo dpo|grpo|all] [--reps 3] [--steps 30]

The model has Qwen2-0.5B's shape (24 layers, hidden 896, 14 heads of which 2 key/value, MLP 4864,
vocabulary 151,936, tied embeddings; 494M parameters), weights drawn from N(0, 0.02²) by a seeded
generator and saved in bfloat16 with SDPA attention; text goes through the byte-level tokenizer of
`builtin:tiny-llama` (its ids are the first 262 of the vocabulary, so the LM head costs what a real
0.5B model's does). Data, hyperparameters and the alternating, one-process-per-run protocol are
`bench/trainers_vs_trl.py`'s; TRL runs with bf16 autocast (its default on GPU). Printed per
trainer: tokens/s, model FLOP utilisation against this device's bf16 matmul rate measured in the
same run, and the peak GPU memory torch allocated. Results are merged into bench/results.json.

Needs a CUDA device: without one it stops at once and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from bench.common import POLICY_DIR, machine, preference_rows, prompt_rows  # noqa: E402
from bench.trainers_vs_trl import BATCH_SIZE, EVAL_ROWS, GRPO, compare, print_table, write_results  # noqa: E402

QWEN2_0_5B_SHAPE = {
    "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "vocab_size": 151_936, "max_position_embeddings": 4096, "tie_word_embeddings": True,
    "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6,
}  # fmt: skip


def require_cuda() -> None:
    """Stop with a clear message when no CUDA device is visible."""
    if not torch.cuda.is_available():
        sys.exit(
            "bench/gpu.py needs a CUDA device, and torch sees none (torch.cuda.is_available() is False; "
            f"torch {torch.__version__}). Run it on a GPU machine with a CUDA build of torch."
        )


def build_model(root: Path) -> Path:
    """Write the random Qwen2-shaped model (bf16, SDPA) and the byte-level tokenizer to ``root/policy``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trainers.models.tiny import INIT_SEED, INIT_STD, build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(**QWEN2_0_5B_SHAPE, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, attn_implementation="sdpa")  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        model = Qwen2ForCausalLM(config)
    generator = torch.Generator().manual_seed(INIT_SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)  # RMSNorm weights
            elif param.dim() >= 2:
                param.normal_(0.0, INIT_STD, generator=generator)
            else:
                param.zero_()  # the q, k, v biases
    directory = root / POLICY_DIR
    model.to(torch.bfloat16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters", flush=True)
    return directory


def bf16_matmul_rate(size: int = 8192, seconds: float = 5.0) -> float:
    """This device's bf16 matmul rate in FLOP/s: the median of timed (size × size) products."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    rates, end = [], time.perf_counter() + seconds
    start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    while time.perf_counter() < end:
        start_event.record()
        for _ in range(10):
            a @ b
        end_event.record()
        end_event.synchronize()
        rates.append(10 * 2 * size**3 / (start_event.elapsed_time(end_event) / 1000))
    del a, b
    torch.cuda.empty_cache()
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", default="all", choices=["dpo", "grpo", "all"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    require_cuda()
    command = "python bench/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    info = machine() | {"gpu": torch.cuda.get_device_name(0)}
    algos = ["dpo", "grpo"] if args.algo == "all" else [args.algo]
    entries = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)
        build_model(work)
        (work / "train.json").write_text(json.dumps(preference_rows(args.steps * BATCH_SIZE, seed=1)))
        (work / "eval.json").write_text(json.dumps(preference_rows(EVAL_ROWS, seed=2)))
        (work / "prompts.json").write_text(json.dumps(prompt_rows(args.steps * GRPO["prompts"], seed=3)))
        rate = bf16_matmul_rate()
        print(f"bf16 matmul rate: {rate / 1e12:.1f} TFLOP/s", flush=True)
        for algo in algos:
            print(f"{algo}:", flush=True)
            threads = os.cpu_count() or 1
            found = compare(algo, work, args.reps, args.steps, args.warmup, rate, threads, [], device="cuda")
            entries += [e | {"name": "gpu/" + e["name"], "bf16_matmul_flops_per_s": rate} for e in found]
    write_results(entries, command, info)
    print_table(entries)


if __name__ == "__main__":
    main()
