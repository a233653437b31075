"""Operations that need the model itself (scoring, merging adapters), run by `python -m trainers` in a
child process, so the API process never imports torch and a crash there stays there."""

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from api.errors import ApiError, InvalidRequest

log = logging.getLogger(__name__)
USER_ERROR_EXIT = 2  # the trainers CLI exits 2 for bad input (argparse does too)


class ModelOpFailed(ApiError):
    status_code = 500
    type = "internal_error"


def run_trainers(args: list[str], *, stdin: Any = None, timeout: float, param: str | None = None) -> Any:
    """Run `python -m trainers <args>` with `stdin` as JSON; return its stdout parsed as JSON (or None)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "trainers", *args], capture_output=True, timeout=timeout,
                              input=None if stdin is None else json.dumps(stdin).encode())
    except subprocess.TimeoutExpired as exc:
        raise ModelOpFailed(f"the model operation took longer than {timeout:.0f} s") from exc
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        message = lines[-1] if lines else f"exit code {proc.returncode}"
        if proc.returncode == USER_ERROR_EXIT:
            raise InvalidRequest(message, param=param)
        log.error("python -m trainers %s failed:\n%s", " ".join(args), "\n".join(lines[-30:]))
        raise ModelOpFailed(f"the model operation failed: {message}")
    out = proc.stdout.decode().strip()
    return json.loads(out) if out else None


def score(model_dir: Path, items: list[dict[str, Any]], *, timeout: float) -> list[dict[str, float]]:
    """Scores of `items` under the reward model in `model_dir`."""
    return run_trainers(["score", "--model-dir", str(model_dir)], stdin=items, timeout=timeout)


def merge(model_dir: Path, out_dir: Path, *, timeout: float) -> None:
    """Write base + adapter of `model_dir` as one full model into `out_dir`."""
    run_trainers(["merge", "--model-dir", str(model_dir), "--output", str(out_dir)], timeout=timeout)
