"""Scoring latency: `POST /v1/checkpoints/{id}/score` with a builtin:tiny-llama reward model.

    .venv/bin/python bench/score.py [--repeats 50] [--cli-runs 3]

A reward model is trained for one step (`python -m trainers reward_model`) and stored as a
checkpoint of a fresh embedded deployment; the API runs as its own process (``uvicorn
api.main:app``), so its model process is its child as in production.

- cli: ``python -m trainers score`` run directly, once per call (`--cli-runs` times): what every
  score request cost when each started its own process (the HTTP hop not included).
- cold: the first score request of the API process (starts the model process, loads the model).
- warm: `--repeats` further requests, one at a time, p50 and p99.
- refused: `--repeats` requests refused by validation (a pair with nothing to score), p50.

Each request scores one prompt/response pair. Figures merge into bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

from bench.service import Api, deployment, new_key  # noqa: E402
from bench.trainers_vs_trl import record_service_figures  # noqa: E402

PAIR = {"prompt": "say: hello\n", "response": "HELLO"}


def trainers_cli(*args: Any, stdin: str | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "trainers", *map(str, args)], cwd=ROOT, capture_output=True,
                         text=True, input=stdin, check=True)  # fmt: skip
    return out.stdout


def reward_model(root: Path) -> Path:
    """A builtin:tiny-llama reward model after one training step; its model/ directory."""
    from trainers.data.synthetic import uppercase_preference_rows

    rows = root / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in uppercase_preference_rows(8)))
    trainers_cli("reward_model", "--data", rows, "--base-model", "builtin:tiny-llama", "--output", root / "run",
                 "--max-steps", 1, "--batch-size", 8)  # fmt: skip
    return root / "run" / "checkpoint-1" / "model"


def store_checkpoint(settings: Any, model_dir: Path) -> str:
    """A job with `model_dir` as its checkpoint, written as the worker writes one; the checkpoint id."""
    from core.artifacts import ArtifactStore
    from core.db import session_scope
    from core.models import Checkpoint, Dataset, Job, Project

    store = ArtifactStore(settings.artifacts_dir)
    staging = store.staging_dir()
    shutil.copytree(model_dir, staging / "model")
    info = json.loads((model_dir / "rlhf_service.json").read_text())
    with session_scope(settings.database_url) as session:
        project = session.query(Project).one()
        dataset = Dataset(project_id=project.id, name="bench", kind="preference", filename="bench.jsonl",
                          format="jsonl", sha256="0" * 64)
        session.add(dataset)
        session.flush()
        job = Job(project_id=project.id, type="reward_model", base_model="builtin:tiny-llama", dataset_id=dataset.id,
                  hyperparameters={})  # fmt: skip
        session.add(job)
        session.flush()
        store.commit(staging, f"{job.id}/bench")
        checkpoint = Checkpoint(job_id=job.id, step=1, artifact_key=f"{job.id}/bench", size_bytes=1,
                                sha256="0" * 64, metrics={}, model_info=info)  # fmt: skip
        session.add(checkpoint)
        session.flush()
        return checkpoint.id


def timed_post(client: httpx.Client, url: str, body: dict[str, Any], status: int) -> float:
    start = time.perf_counter()
    r = client.post(url, json=body)
    elapsed = (time.perf_counter() - start) * 1000
    assert r.status_code == status, r.text
    return elapsed


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50, help="warm and refused requests each")
    parser.add_argument("--cli-runs", type=int, default=3, help="direct `python -m trainers score` runs")
    args = parser.parse_args(argv)
    command = "python bench/score.py " + " ".join(argv if argv is not None else sys.argv[1:])

    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp, deployment("embedded", Path(tmp)) as settings:
        root = Path(tmp)
        model_dir = reward_model(root)
        cli_ms = []
        for _ in range(args.cli_runs):
            start = time.perf_counter()
            trainers_cli("score", "--model-dir", model_dir, stdin=json.dumps([PAIR]))
            cli_ms.append((time.perf_counter() - start) * 1000)
        key = new_key(settings)
        checkpoint_id = store_checkpoint(settings, model_dir)
        api = Api(settings, root / "api.log")
        try:
            with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
                url = f"/v1/checkpoints/{checkpoint_id}/score"
                cold = timed_post(client, url, {"pairs": [PAIR]}, 200)
                warm = [timed_post(client, url, {"pairs": [PAIR]}, 200) for _ in range(args.repeats)]
                refused = [timed_post(client, url, {"pairs": [{"prompt": "", "response": ""}]}, 422)
                           for _ in range(args.repeats)]  # fmt: skip
        finally:
            api.stop()
    figures = {
        "cli_per_call": (statistics.median(cli_ms), {"runs_ms": cli_ms}),
        "cold_first_call": (cold, {}),
        "warm_p50": (percentile(warm, 50), {"requests": len(warm)}),
        "warm_p99": (percentile(warm, 99), {"requests": len(warm)}),
        "refused_p50": (percentile(refused, 50), {"requests": len(refused)}),
    }
    entries = [{"name": f"score/{name}", "what": "one pair, builtin:tiny-llama reward model, embedded deployment",
                "units": "ms", "ours": value, "trl": None, "ratio": None, "details": details}
               for name, (value, details) in figures.items()]  # fmt: skip
    record_service_figures(entries, command)


if __name__ == "__main__":
    main()
