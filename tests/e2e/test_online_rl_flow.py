"""PPO and GRPO through the real API and worker processes: rewards go up while training.

GRPO runs on both deployments; PPO's flows run on the embedded one, since everything they add over
GRPO happens inside the training process."""

import pytest

from tests.e2e.e2e_support import stream_until_done
from tests.support import jsonl

pytestmark = pytest.mark.e2e
PROMPTS = [{"prompt": p, "letter": "e"} for p in ["Hello", "Say something", "Write", "Go", "Tell me", "Once",
                                                  "Why", "Hi there"]]
# The completion must contain the prompt row's letter: a grader reading a field of the row.
CONTAINS_LETTER = {"type": "string_check", "name": "has_letter", "operation": "contains",
                   "input": "{{sample.output_text}}", "reference": "{{item.letter}}"}
GRPO_LEARNING = {"learning_rate": 1e-2, "max_steps": 16, "rollout_batch_size": 4, "num_generations": 8,
                 "batch_size": 32, "max_new_tokens": 8, "max_prompt_length": 16, "max_length": 64}


def prompt_dataset(client) -> str:
    r = client.post("/v1/datasets", data={"kind": "prompt"}, files={"file": ("prompts.jsonl", jsonl(PROMPTS))})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def run_streamed(client, body: dict) -> tuple[dict, list[dict]]:
    """Create the job, follow its stream to the end; the job as it ended and every frame."""
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    frames = stream_until_done(client, r.json()["id"])
    return client.get(f"/v1/jobs/{r.json()['id']}").json(), frames


def run(client, body: dict) -> tuple[dict, list[dict]]:
    job, frames = run_streamed(client, body)
    return job, [f["data"] for f in frames if f["event"] == "metrics"]


def assert_samples_and_finished_pace(client, job: dict, steps: list[int]) -> None:
    """Each of `steps` has samples whose rewards are the grader's; the job shows progress 1 and no pace."""
    samples = client.get(f"/v1/jobs/{job['id']}/samples", params={"limit": 100}).json()["data"]
    assert [s["step"] for s in samples] == steps
    for row in (row for s in samples for row in s["rows"]):
        assert row["reward"] == row["reward/has_letter"] == float("e" in row["completion"])
    assert job["progress"] == 1.0
    assert (job["steps_per_second"], job["tokens_per_second"], job["estimated_finish"]) == (None, None, None)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_grpo_with_a_string_check_grader_raises_the_reward(service):
    job, frames = run_streamed(service, {"type": "grpo", "base_model": "builtin:tiny-llama", "seed": 0,
                                         "dataset_id": prompt_dataset(service), "reward": CONTAINS_LETTER,
                                         "hyperparameters": GRPO_LEARNING})
    assert job["status"] == "succeeded", job["error"]
    metrics = [f["data"] for f in frames if f["event"] == "metrics"]
    # One rollout per step: 4 of its completions, one of each prompt, streamed and stored at every step.
    streamed = [f["data"] for f in frames if f["event"] == "samples"]
    assert [s["step"] for s in streamed] == list(range(1, 17)) and all(len(s["rows"]) == 4 for s in streamed)
    assert_samples_and_finished_pace(service, job, list(range(1, 17)))
    assert [m["step"] for m in metrics] == list(range(1, 17))
    before = mean(m["values"]["reward/mean"] for m in metrics[:3])
    after = mean(m["values"]["reward/mean"] for m in metrics[-3:])
    assert before < 0.15 and after > 0.8, (before, after)
    last = metrics[-1]["values"]
    assert {"reward/has_letter", "frac_reward_zero_std", "objective/kl", "policy/clipfrac",
            "completions/mean_length"} <= set(last)
    assert service.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"][-1]["is_final"]


PPO_LEARNING = {"learning_rate": 1e-2, "critic_learning_rate": 3e-3, "max_steps": 48, "rollout_batch_size": 32,
                "batch_size": 16, "ppo_epochs": 2, "max_new_tokens": 16, "max_prompt_length": 16, "max_length": 64}
STEPS_PER_ROLLOUT = 4  # 2 epochs × 2 minibatches of 16 completions


def test_ppo_with_a_string_check_grader_raises_the_reward(embedded_service):
    service = embedded_service
    job, metrics = run(service, {"type": "ppo", "base_model": "builtin:tiny-llama", "seed": 0,
                                 "dataset_id": prompt_dataset(service), "reward": CONTAINS_LETTER,
                                 "hyperparameters": PPO_LEARNING})
    assert job["status"] == "succeeded", job["error"]
    assert_samples_and_finished_pace(service, job, list(range(STEPS_PER_ROLLOUT, 49, STEPS_PER_ROLLOUT)))
    scores = [m["values"]["objective/scores"] for m in metrics if (m["step"] - 1) % STEPS_PER_ROLLOUT == 0]
    assert len(scores) == 12
    before, after = scores[0], mean(scores[-3:])
    assert before < 0.2 and after > before + 0.4, (before, after)
    last = metrics[-1]["values"]
    assert {"objective/kl", "policy/approx_kl", "policy/clipfrac", "val/vf_loss", "val/explained_variance",
            "policy/entropy"} <= set(last)


def test_ppo_rewarded_by_a_reward_model_job_runs_end_to_end(embedded_service):
    service = embedded_service
    from trainers.data.synthetic import uppercase_preference_rows

    pairs = service.post("/v1/datasets", data={"kind": "preference"},
                         files={"file": ("pairs.jsonl", jsonl(uppercase_preference_rows(64, seed=3)))}).json()["id"]
    rm_job, _ = run(service, {"type": "reward_model", "base_model": "builtin:tiny-llama", "dataset_id": pairs,
                              "hyperparameters": {"learning_rate": 1e-3, "max_steps": 10}})
    assert rm_job["status"] == "succeeded", rm_job["error"]
    rm = service.get(f"/v1/jobs/{rm_job['id']}/checkpoints").json()["data"][-1]["id"]

    reward = {"type": "multi", "name": "total", "graders": [
        {"type": "model", "name": "rm", "checkpoint_id": rm, "clip": 5.0}, CONTAINS_LETTER | {"weight": 0.5}]}
    job, metrics = run(service, {
        "type": "ppo", "base_model": "builtin:tiny-llama", "dataset_id": prompt_dataset(service), "reward": reward,
        "hyperparameters": {**PPO_LEARNING, "max_steps": 8, "value_model": "reward_model"}})
    assert job["status"] == "succeeded", job["error"]
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert {"reward/rm", "reward/has_letter"} <= set(metrics[-1]["values"])


def test_ppo_ptx_mixes_in_the_language_modelling_loss_of_a_text_dataset(embedded_service):
    service = embedded_service
    texts = service.post("/v1/datasets", data={"kind": "text"}, files={
        "file": ("texts.jsonl", jsonl([{"text": f"Line {i} of some plain text."} for i in range(16)]))})
    assert texts.status_code == 201, texts.text
    job, metrics = run(service, {
        "type": "ppo", "base_model": "builtin:tiny-llama", "dataset_id": prompt_dataset(service),
        "reward": CONTAINS_LETTER, "ptx_dataset_id": texts.json()["id"],
        "hyperparameters": {**PPO_LEARNING, "max_steps": 4, "ptx_coef": 0.5}})
    assert job["status"] == "succeeded", job["error"]
    assert all(m["values"]["ptx/loss"] > 0 for m in metrics)
