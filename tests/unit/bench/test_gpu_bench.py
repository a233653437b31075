"""bench/gpu.py, the GPU benchmark, in its --dry-run mode on the CPU: every run it makes on a GPU, tiny."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "gpu.py"


@pytest.mark.trains
def test_dry_run_measures_every_run_and_writes_the_table_and_json(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True,
                          text=True, timeout=300, env=os.environ | {"CUDA_VISIBLE_DEVICES": ""})  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]

    record = json.loads(out.read_text())
    assert record["dry_run"] is True and record["device"] == "cpu" and record["bf16_matmul_flops_per_s"] > 0
    with_trl = importlib.util.find_spec("trl") is not None
    runs = {("dpo", "ours-bf16"), ("dpo", "ours-fp32"), ("grpo", "ours-bf16")}
    runs |= {("dpo", "trl"), ("grpo", "trl")} if with_trl else set()
    figures = {(e["algo"], e["name"].rsplit("/", 1)[1], e["figure"]): e for e in record["figures"]}
    assert {(algo, trainer) for algo, trainer, _ in figures} == runs
    for algo, trainer in runs:
        for figure in ("tokens_per_s", "mfu", "peak_rss_mib"):
            assert figures[algo, trainer, figure]["value"] > 0, (algo, trainer, figure)
    assert figures["grpo", "ours-bf16", "completions_per_s"]["value"] > 0
    assert figures["dpo", "ours-bf16", "tokens_per_s"]["ratio"] == 1.0
    assert ("TRL is not installed" in done.stdout) is not with_trl
    assert "| dpo | ours, fp32 (TF32) | tokens_per_s (tokens/s) |" in done.stdout


@pytest.mark.trains
def test_dry_run_of_the_rollout_engines_measures_each_engine_here_and_names_what_it_skips(tmp_path):
    out = tmp_path / "rollouts.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--algo", "rollouts", "--out", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env=os.environ | {"CUDA_VISIBLE_DEVICES": ""})  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]

    record = json.loads(out.read_text())
    with_trl = importlib.util.find_spec("trl") is not None
    with_vllm = importlib.util.find_spec("vllm") is not None
    runs = {"ours-hf", "ours-compiled"} | ({"trl"} if with_trl else set())
    runs |= ({"ours-vllm"} | ({"trl-vllm"} if with_trl else set())) if with_vllm else set()
    figures = {(e["name"].rsplit("/", 1)[1], e["figure"]): e for e in record["figures"]}
    assert {e["algo"] for e in record["figures"]} == {"rollouts"}
    assert {trainer for trainer, _ in figures} == runs
    for trainer in runs:
        assert figures[trainer, "completions_per_s"]["value"] > 0, trainer
        assert figures[trainer, "completions_per_s"]["baseline"] == "ours, hf eager"
    assert figures["ours-hf", "completions_per_s"]["ratio"] == 1.0
    assert ("ours, vllm: skipped, vLLM is not installed" in done.stdout) is not with_vllm
    assert "| rollouts | ours, hf compiled | completions_per_s (completions/s) |" in done.stdout
