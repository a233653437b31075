#!/usr/bin/env bash
# The first thing to run on a GPU machine: every trainer a few steps in bf16 on CUDA, checking that
# the loss falls and the checkpoint loads (bench/gpu_check.py; arguments are passed on to it, e.g.
# --steps 8 --out bench/gpu_check.json). On a machine with two GPUs or more it also runs DPO on 2 processes
# (torchrun, NCCL; ddp and fsdp); with fewer it prints that it skipped that job.
# Exits non-zero when a check fails, 2 when no GPU is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python bench/gpu_check.py "$@"
