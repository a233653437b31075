#!/usr/bin/env bash
# Prepare ./.venv: torch pinned first (so resolving the project never swaps its build), then the
# project with the extras named by the argument (default: test; scripts/test.sh adds bench, whose TRL
# the parity tests compare against); and Debian's chromium for the browser test, when missing. Safe
# to run again: it reinstalls only when pyproject.toml or the extras changed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
extras=${1:-test}
[ -x .venv/bin/python ] || "$python" -m venv .venv
project=$(sha256sum pyproject.toml | cut -c1-16)
stamp=".venv/.installed-$project-${extras//,/-}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[$extras]"
  find .venv -maxdepth 1 -name '.installed-*' ! -name ".installed-$project-*" -delete  # an older pyproject.toml's
  touch "$stamp"
fi
# The browser test of the API docs drives Debian's chromium: Playwright's own browser download needs the
# internet, which an air-gapped machine lacks. Installed only when missing, so a second run costs nothing.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "$sudo" ] || command -v sudo >/dev/null; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing and there is no sudo: install it (apt-get install chromium) for the browser tests" >&2
  fi
fi
