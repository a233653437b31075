"""How fast does the hf backend decode, eager against compiled (static KV cache, `torch.compile`'d step)?

    .venv/bin/python bench/generation_speed.py [--rows 16] [--tokens 64] [--threads 2] [--model tiny|bench]

`builtin:tiny-llama` (``--model bench``: the benchmark model of `bench/trainers_vs_trl.py`, 4 layers
of hidden size 256, `bench.common.build_models`) samples `rows` completions of exactly `tokens`
tokens (no early stop: every step runs) from 4 prompts of 2–14 tokens, through `HFBackend` with
``compile_generation`` off and on, on the CPU. Reported: the first call of each (the compiled one
includes its compile), then the best of 3 timed calls as ms per decoded token step (all rows at
once) and per token, and the speedup. The compile is timed twice in fresh processes sharing a new
inductor cache directory: cold (empty cache) and warm (the graphs on disk), which is what
`trainers.rl.generation.compiled`'s rule for ``compile_generation: null`` on the CPU weighs against
the saving per step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from bench.common import build_models  # noqa: E402
from trainers.models.tiny import build_tiny_llama  # noqa: E402
from trainers.rl.generation.hf import HFBackend  # noqa: E402
from trainers.spec.config import GRPOHyperparameters  # noqa: E402

PROMPTS = ["Hi", "Say something longer", "Write a short poem about the sea", "Go"]


def load_model(model_dir: str | None):
    """`builtin:tiny-llama`, or the model saved in `model_dir`, and its tokenizer."""
    if model_dir is None:
        return build_tiny_llama()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


def timed_calls(
    compiled: bool, rows: int, tokens: int, repeats: int = 3, model_dir: str | None = None
) -> dict[str, float]:
    """The first call's seconds and the best of `repeats` later calls' ms per step."""
    model, tokenizer = load_model(model_dir)
    hp = GRPOHyperparameters(max_new_tokens=tokens, max_prompt_length=32, max_length=32 + tokens,
                             compile_generation=compiled)  # fmt: skip
    backend = HFBackend.of(model, tokenizer, hp)
    backend.stop_ids = [-1]  # no stop token: every call decodes `tokens` steps
    prompts = [tokenizer(PROMPTS[i % len(PROMPTS)]).input_ids for i in range(rows)]
    options = {"max_new_tokens": tokens, "temperature": 1.0, "top_p": 1.0}
    start = time.perf_counter()
    backend.sample(prompts, row_seeds=list(range(rows)), **options)
    first = time.perf_counter() - start
    best = float("inf")
    for repeat in range(repeats):
        start = time.perf_counter()
        rollout = backend.sample(prompts, row_seeds=[repeat * rows + r for r in range(rows)], **options)
        best = min(best, time.perf_counter() - start)
    assert rollout.response_ids.shape == (rows, tokens)
    return {"first_call_s": first, "ms_per_step": 1000 * best / tokens, "ms_per_token": 1000 * best / (tokens * rows)}


def compile_in_fresh_process(cache_dir: str, rows: int, tokens: int, threads: int, model_dir: str | None) -> float:
    """The first compiled call's seconds in a new process whose inductor cache is `cache_dir`."""
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": cache_dir}
    model = ["--model-dir", model_dir] if model_dir else []
    command = [sys.executable, __file__, "--child", "--rows", str(rows), "--tokens", str(tokens),
               "--threads", str(threads), *model]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["first_call_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", choices=("tiny", "bench"), default="tiny")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(timed_calls(True, args.rows, args.tokens, repeats=1, model_dir=args.model_dir)))
        return
    with tempfile.TemporaryDirectory() as cache_dir, tempfile.TemporaryDirectory() as models:
        model_dir = str(build_models(Path(models))[0]) if args.model == "bench" else None
        cold = compile_in_fresh_process(cache_dir, args.rows, args.tokens, args.threads, model_dir)
        warm = compile_in_fresh_process(cache_dir, args.rows, args.tokens, args.threads, model_dir)
        eager = timed_calls(False, args.rows, args.tokens, model_dir=model_dir)
        compiled = timed_calls(True, args.rows, args.tokens, model_dir=model_dir)
    saving = eager["ms_per_step"] - compiled["ms_per_step"]
    print(json.dumps({
        "name": f"generation/hf_cpu/{args.model}", "rows": args.rows, "tokens": args.tokens,
        "model": "builtin:tiny-llama" if args.model == "tiny" else "bench.common.build_models policy",
        "threads": args.threads, "torch": torch.__version__,
        "eager_ms_per_step": round(eager["ms_per_step"], 3), "compiled_ms_per_step": round(compiled["ms_per_step"], 3),
        "eager_ms_per_token": round(eager["ms_per_token"], 4),
        "compiled_ms_per_token": round(compiled["ms_per_token"], 4),
        "speedup": round(eager["ms_per_step"] / compiled["ms_per_step"], 2),
        "saving_ms_per_step": round(saving, 3),
        "compile_cold_s": round(cold, 1), "compile_warm_s": round(warm, 1),
        "break_even_steps_cold": round(1000 * cold / saving) if saving > 0 else None,
        "break_even_steps_warm": round(1000 * warm / saving) if saving > 0 else None,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
