"""Reward models, the DPO loss family, LoRA and chat data through the real API and worker processes."""

import hashlib
import io
import tarfile

import pytest

from tests.e2e.e2e_support import create_dataset, stream_until_done
from trainers.data.synthetic import uppercase_preference_rows

pytestmark = pytest.mark.e2e


def run(client, body: dict) -> dict:
    """Create a job, follow its stream to the end, return the finished job."""
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    frames = stream_until_done(client, r.json()["id"])
    job = client.get(f"/v1/jobs/{r.json()['id']}").json()
    assert frames[-1]["data"]["status"] == job["status"]
    return job


def final_checkpoint(client, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"][-1]


def test_reward_model_job_scores_held_out_pairs(service):
    held_out = uppercase_preference_rows(60, seed=77)
    job = run(service, {
        "type": "reward_model", "base_model": "builtin:tiny-llama", "seed": 0,
        "dataset_id": create_dataset(service, uppercase_preference_rows(128, seed=1)),
        "eval_dataset_id": create_dataset(service, held_out[:20]),
        "hyperparameters": {"learning_rate": 1e-3, "max_steps": 20, "batch_size": 8, "eval_every": 10}})
    assert job["status"] == "succeeded", job["error"]
    metrics = service.get(f"/v1/jobs/{job['id']}/metrics", params={"limit": 100}).json()["data"]
    assert [m["step"] for m in metrics if "eval/accuracy" in m["values"]] == [10, 20]
    assert metrics[-1]["values"]["eval/accuracy"] > 0.9

    ckpt = final_checkpoint(service, job["id"])
    model = ckpt["model"]
    assert model["kind"] == "reward_model" and model["adapter"] is False and model["reward_std"] > 0
    assert ckpt["metrics"]["eval/accuracy"] == metrics[-1]["values"]["eval/accuracy"]

    pairs = [{"prompt": r["prompt"], "response": r[side]} for r in held_out[20:] for side in ("chosen", "rejected")]
    r = service.post(f"/v1/checkpoints/{ckpt['id']}/score", json={"pairs": pairs})
    assert r.status_code == 200, r.text
    scores = [s["score"] for s in r.json()["data"]]
    wins = sum(c > w for c, w in zip(scores[::2], scores[1::2], strict=True))
    assert wins / (len(scores) // 2) > 0.9
    normalized = r.json()["data"][0]["normalized"]
    assert normalized == pytest.approx((scores[0] - model["reward_mean"]) / model["reward_std"], rel=1e-4)
    texts = service.post(f"/v1/checkpoints/{ckpt['id']}/score", json={"texts": ["ABC", "abc"]}).json()["data"]
    assert len(texts) == 2
    bad = service.post(f"/v1/checkpoints/{ckpt['id']}/score", json={"texts": ["a"], "pairs": pairs[:1]})
    assert bad.status_code == 422


def test_lora_dpo_on_chat_data_merges_and_serves_as_a_base_model(service, tmp_path):
    rows = uppercase_preference_rows(96, seed=2, conversational=True)
    job = run(service, {
        "type": "dpo", "base_model": "builtin:tiny-llama", "seed": 0, "lora": {"r": 8},
        "dataset_id": create_dataset(service, rows),
        "hyperparameters": {"learning_rate": 1e-2, "max_steps": 30, "batch_size": 8, "loss_type": "sigmoid",
                            "label_smoothing": 0.05, "max_length": 40, "max_prompt_length": 16}})
    assert job["status"] == "succeeded", job["error"]
    metrics = service.get(f"/v1/jobs/{job['id']}/metrics", params={"limit": 100}).json()["data"]
    # One batch is 8 pairs, so a single pair ranked wrong costs 0.125: judge the last 5 steps together.
    last = [m["values"]["rewards/accuracies"] for m in metrics[-5:]]
    assert len(last) == 5 and sum(last) / 5 > 0.9, last
    events = service.get(f"/v1/jobs/{job['id']}/events", params={"limit": 100}).json()["data"]
    assert any(e["level"] == "warning" and "truncated" in e["message"] for e in events)

    ckpt = final_checkpoint(service, job["id"])
    assert ckpt["model"]["adapter"] is True and ckpt["merged_sha256"] is None
    adapter = tarfile.open(fileobj=io.BytesIO(service.get(f"/v1/checkpoints/{ckpt['id']}/download").content))
    names = {n.split("/", 1)[1] for n in adapter.getnames()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names and "model.safetensors" not in names

    merged = service.get(f"/v1/checkpoints/{ckpt['id']}/download", params={"merged": "true"})
    assert merged.status_code == 200, merged.text
    again = service.get(f"/v1/checkpoints/{ckpt['id']}").json()
    assert hashlib.sha256(merged.content).hexdigest() == again["merged_sha256"]
    tarfile.open(fileobj=io.BytesIO(merged.content)).extractall(tmp_path, filter="data")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = tmp_path / f"{ckpt['id']}-merged"
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    with torch.no_grad():
        ids = tokenizer(ckpt["probe"]["text"], return_tensors="pt")["input_ids"]
        logits = model(input_ids=ids).logits[0, -1, : len(ckpt["probe"]["logits"])]
    torch.testing.assert_close(logits, torch.tensor(ckpt["probe"]["logits"]), rtol=0, atol=1e-4)

    r = service.post(f"/v1/checkpoints/{ckpt['id']}/score", json={"texts": ["x"]})
    assert r.status_code == 422 and "not a reward model" in r.json()["error"]["message"]

    follow_up = run(service, {"type": "dpo", "base_model": f"checkpoint:{ckpt['id']}", "seed": 1,
                              "dataset_id": job["dataset_id"],
                              "hyperparameters": {"loss_type": "ipo", "max_steps": 2, "learning_rate": 1e-4}})
    assert follow_up["status"] == "succeeded", follow_up["error"]
