"""bench/gpu_check.py, the GPU correctness check, run on the CPU so that it keeps working between GPU runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "gpu_check.py"
TRAINERS = ["dpo", "reward_model", "grpo", "ppo"]


def run_check(*args, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"CUDA_VISIBLE_DEVICES": ""} | (env or {}))  # fmt: skip


@pytest.mark.trains
def test_every_check_passes_on_the_cpu_in_bf16(tmp_path):
    out = tmp_path / "result.json"
    done = run_check("--device", "cpu", "--steps", "3", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["passed"] is True and result["device"] == "cpu" and result["steps"] == 3
    names = {c["check"] for c in result["checks"]}
    for trainer in TRAINERS:
        assert {f"{trainer} runs", f"{trainer} metrics finite", f"{trainer} checkpoint loads",
                f"{trainer} precision event"} <= names  # fmt: skip
    assert {"dpo loss falls", "reward_model loss falls", "grpo loss finite", "ppo loss finite"} <= names
    assert all(c["ok"] for c in result["checks"]) and len(result["checks"]) == 22
    events = {c["check"]: c["detail"] for c in result["checks"]}
    assert "precision bf16" in events["ppo precision event"] and "device cpu" in events["ppo precision event"]
    assert "precision fp32" in events["dpo precision auto precision event"]  # auto is fp32 on the CPU
    assert "in torch.bfloat16" in events["dpo checkpoint loads"]  # the base model's type
    assert set(result["final_metrics"]) == set(TRAINERS) and result["final_metrics"]["dpo"]["train/loss"] < 0.69
    lines = done.stdout.splitlines()
    assert lines[0] == "device: cpu" and sum(line.startswith("PASS  ") for line in lines) == 22
    assert "flash-attn: not installed" in lines and "22 of 22 checks passed" in done.stdout


def test_without_a_gpu_it_stops_at_once_with_exit_status_2(tmp_path):
    out = tmp_path / "result.json"
    done = run_check("--out", str(out))
    assert done.returncode == 2
    assert "needs a CUDA device" in done.stderr and "--device cpu" in done.stderr
    assert done.stdout == "" and not out.exists()
