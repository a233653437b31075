"""Scoring with reward-model checkpoints through the API and its warm model process.

A reward model trained for one step by `python -m trainers reward_model` is stored as three
checkpoints of one job (two copies of the reward model, and one labelled a causal LM); the API scores
with them through `app.state.model_ops`, whose process reports its own pid and load count.
"""

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.services import modelops
from core.artifacts import ArtifactStore
from core.db import session_scope
from core.models import Checkpoint
from tests.support import embedded_settings, jsonl, new_project_key, preference_rows, upload
from trainers.data.synthetic import uppercase_preference_rows

pytestmark = [pytest.mark.e2e, pytest.mark.trains]  # starts model processes; its fixtures train models

ROOT = Path(__file__).resolve().parents[3]
PAIRS = [{"prompt": "say: hi\n", "response": "HI"}, {"prompt": "say: hi\n", "response": "hi"},
         {"prompt": [{"role": "user", "content": "say: yo"}], "response": [{"role": "assistant", "content": "YO"}]}]


def trainers_cli(*args, stdin: str | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "trainers", *map(str, args)], cwd=ROOT, capture_output=True,
                         text=True, input=stdin, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rm")
    (root / "rows.jsonl").write_bytes(jsonl(uppercase_preference_rows(8)))
    trainers_cli("reward_model", "--data", root / "rows.jsonl", "--base-model", "builtin:tiny-llama",
                 "--output", root / "run", "--max-steps", 1, "--batch-size", 8)  # fmt: skip
    return root / "run" / "checkpoint-1" / "model"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    """A LoRA DPO checkpoint of builtin:tiny-llama after one step: an adapter to merge."""
    root = tmp_path_factory.mktemp("lora")
    (root / "rows.jsonl").write_bytes(jsonl(uppercase_preference_rows(8)))
    trainers_cli("dpo", "--data", root / "rows.jsonl", "--base-model", "builtin:tiny-llama", "--lora", '{"r": 4}',
                 "--output", root / "run", "--max-steps", 1, "--batch-size", 8)  # fmt: skip
    return root / "run" / "checkpoint-1" / "model"


@pytest.fixture(scope="module")
def cli_scores(reward_model_dir) -> list[dict]:
    """What `python -m trainers score` (one process per call) answers for PAIRS."""
    return json.loads(trainers_cli("score", "--model-dir", reward_model_dir, stdin=json.dumps(PAIRS)))


def make_client(tmp_path: Path, reward_model_dir: Path, adapter_dir: Path | None = None,
                **overrides) -> tuple[TestClient, dict[str, str]]:
    """A client of a fresh embedded deployment, and checkpoint ids: `a`, `b` (reward models), `lm`,
    and `lora` (a LoRA checkpoint) when `adapter_dir` is given."""
    settings = embedded_settings(tmp_path, **overrides)
    client = TestClient(create_app(settings), headers={"Authorization": f"Bearer {new_project_key(settings)}"})
    dataset = upload(client, jsonl(preference_rows(4))).json()["id"]
    job = client.post("/v1/jobs", json={"type": "reward_model", "base_model": "builtin:tiny-llama",
                                        "dataset_id": dataset}).json()["id"]  # fmt: skip
    store = ArtifactStore(settings.artifacts_dir)
    info = json.loads((reward_model_dir / "rlhf_service.json").read_text())
    models = [("a", reward_model_dir, info), ("b", reward_model_dir, info),
              ("lm", reward_model_dir, info | {"kind": "causal_lm"})]
    if adapter_dir is not None:
        models.append(("lora", adapter_dir, json.loads((adapter_dir / "rlhf_service.json").read_text())))
    with session_scope(settings.database_url) as session:
        for step, (_, directory, model_info) in enumerate(models, start=1):
            staging = store.staging_dir()
            shutil.copytree(directory, staging / "model")
            store.commit(staging, f"{job}/step-{step}")
            session.add(Checkpoint(job_id=job, step=step, artifact_key=f"{job}/step-{step}", size_bytes=1,
                                   sha256="0" * 64, metrics={}, model_info=model_info))  # fmt: skip
    rows = client.get(f"/v1/jobs/{job}/checkpoints").json()["data"]
    return client, {name: c["id"] for (name, _, _), c in zip(models, rows, strict=True)}


def model_dir(client: TestClient, checkpoint_id: str) -> str:
    settings = client.app.state.settings
    with session_scope(settings.database_url) as session:
        key = session.get(Checkpoint, checkpoint_id).artifact_key
    return str((ArtifactStore(settings.artifacts_dir).path(key) / "model").resolve())


def stats(client: TestClient) -> dict:
    return modelops.stats(client.app.state.model_ops, timeout=60)


def test_refused_requests_never_start_the_model_process(tmp_path, reward_model_dir):
    client, ckpt = make_client(tmp_path, reward_model_dir)
    with client:
        cases = [
            (ckpt["lm"], {"texts": ["x"]}, "checkpoint_id"),
            (ckpt["a"], {"texts": []}, "texts"),
            (ckpt["a"], {"texts": ["fine", ""]}, "texts[1]"),
            (ckpt["a"], {"pairs": [{"prompt": "", "response": ""}]}, "pairs[0]"),
            (ckpt["a"], {"pairs": [PAIRS[0], {"prompt": [], "response": "x"}]}, "pairs[1].prompt"),
            (ckpt["a"], {"pairs": [{"prompt": "p", "response": [{"role": "user", "content": "x"}]}]},
             "pairs[0].response"),
            (ckpt["a"], {"pairs": [{"prompt": [{"role": "user"}], "response": "x"}]}, "pairs[0].prompt"),
        ]
        for checkpoint_id, body, param in cases:
            r = client.post(f"/v1/checkpoints/{checkpoint_id}/score", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["error"]["param"] == param, body
        ops = client.app.state.model_ops
        assert ops.pid is None and ops.starts == 0


def test_repeated_scores_share_one_process_and_one_load_and_equal_the_cli(tmp_path, reward_model_dir, cli_scores):
    client, ckpt = make_client(tmp_path, reward_model_dir)
    with client:
        first = client.post(f"/v1/checkpoints/{ckpt['a']}/score", json={"pairs": PAIRS})
        second = client.post(f"/v1/checkpoints/{ckpt['a']}/score", json={"pairs": PAIRS})
        assert first.status_code == second.status_code == 200, first.text
        assert first.json()["data"] == second.json()["data"] == cli_scores
        assert set(cli_scores[0]) == {"score", "normalized"}
        ops = client.app.state.model_ops
        report = stats(client)
        assert (report["pid"], report["loads"], ops.starts) == (ops.pid, 1, 1)
        pid = ops.pid
    # Leaving the app (its shutdown) ends the process.
    assert client.app.state.model_ops.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize("cache_bytes, loads, cached", [(1, 3, ["a"]), (10**9, 2, ["b", "a"])])
def test_least_recently_used_models_leave_beyond_the_cache_cap(tmp_path, reward_model_dir, cache_bytes, loads,
                                                                cached):
    client, ckpt = make_client(tmp_path, reward_model_dir, model_ops_cache_bytes=cache_bytes)
    with client:
        for name in ("a", "b", "a"):
            r = client.post(f"/v1/checkpoints/{ckpt[name]}/score", json={"texts": ["HELLO"]})
            assert r.status_code == 200, r.text
        report = stats(client)
        assert report["loads"] == loads
        assert report["cached"] == [model_dir(client, ckpt[name]) for name in cached]


def test_a_killed_process_is_replaced_on_the_next_call(tmp_path, reward_model_dir, cli_scores):
    client, ckpt = make_client(tmp_path, reward_model_dir)
    with client:
        assert client.post(f"/v1/checkpoints/{ckpt['a']}/score", json={"pairs": PAIRS}).status_code == 200
        ops = client.app.state.model_ops
        first = ops.pid
        os.kill(first, signal.SIGKILL)
        while ops.pid is not None:  # until the kernel has delivered the signal
            time.sleep(0.05)
        r = client.post(f"/v1/checkpoints/{ckpt['a']}/score", json={"pairs": PAIRS})
        assert r.status_code == 200, r.text
        assert r.json()["data"] == cli_scores
        assert ops.pid not in (None, first) and ops.starts == 2


def test_a_call_past_its_deadline_answers_504_and_leaves_a_working_process(tmp_path, reward_model_dir, cli_scores):
    client, ckpt = make_client(tmp_path, reward_model_dir)
    with client:
        assert client.post(f"/v1/checkpoints/{ckpt['a']}/score", json={"pairs": PAIRS}).status_code == 200
        ops, settings = client.app.state.model_ops, client.app.state.settings
        first = ops.pid
        settings.model_ops_timeout_seconds = 1e-6  # no process answers in a microsecond
        r = client.post(f"/v1/checkpoints/{ckpt['a']}/score", json={"pairs": PAIRS})
        assert r.status_code == 504, r.text
        assert r.json()["error"]["type"] == "timeout_error" and "restarted" in r.json()["error"]["message"]
        assert ops.pid is None
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)
        settings.model_ops_timeout_seconds = 600
        r = client.post(f"/v1/checkpoints/{ckpt['a']}/score", json={"pairs": PAIRS})
        assert r.status_code == 200, r.text
        assert r.json()["data"] == cli_scores and ops.starts == 2


def test_merging_an_adapter_goes_through_the_same_process(tmp_path, reward_model_dir, adapter_dir, cli_scores):
    client, ckpt = make_client(tmp_path, reward_model_dir, adapter_dir)
    with client:
        assert client.post(f"/v1/checkpoints/{ckpt['a']}/score", json={"pairs": PAIRS}).json()["data"] == cli_scores
        r = client.get(f"/v1/checkpoints/{ckpt['lora']}/download", params={"merged": "true"})
        assert r.status_code == 200, r.text
        assert hashlib.sha256(r.content).hexdigest() == client.get(f"/v1/checkpoints/{ckpt['lora']}").json()[
            "merged_sha256"]
        names = {n.split("/", 1)[1] for n in tarfile.open(fileobj=io.BytesIO(r.content)).getnames() if "/" in n}
        assert "model.safetensors" in names and "adapter_config.json" not in names
        ops = client.app.state.model_ops
        assert (stats(client)["pid"], ops.starts) == (ops.pid, 1)
