"""The KTO loop on builtin:tiny-llama: one step against a naive computation, learning, micro-batching, the CLI."""

import copy
import json
import math
import random

import pytest
import torch

import trainers
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, cli, tiny, write_jsonl
from trainers import KTOJob, TrainingData
from trainers.data.batching import BatchOrder
from trainers.data.feedback import collate_feedback, tokenize_feedback, unpair_preference_rows
from trainers.data.synthetic import uppercase_preference_rows
from trainers.kto import FeedbackReference, accumulate_gradients, present_metrics
from trainers.ops.logprobs import sequence_logprobs
from trainers.spec.kto import KTOHyperparameters

PAD = 256
METRIC_NAMES = {"train/loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                "logps/rejected", "kl", "train/learning_rate", "train/grad_norm", "train/epoch",
                "train/num_tokens"}  # fmt: skip


def kto_job(seed=0, **hyperparameters):
    return KTOJob(base_model="builtin:tiny-llama", seed=seed, hyperparameters=hyperparameters)


def feedback_rows(n, seed=0):
    """Unbalanced feedback rows: every upper-case completion is desirable, about half the lower-case ones kept."""
    rng = random.Random(seed)
    rows = unpair_preference_rows(uppercase_preference_rows(n, seed=seed))
    return [row for row in rows if row["label"] or rng.random() < 0.5]


def perturbed(model, scale=0.05, seed=3):
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return other


def naive_logp(model, prompt_ids, completion_ids):
    ids = torch.tensor([prompt_ids + completion_ids])
    mask = torch.tensor([[0] * len(prompt_ids) + [1] * len(completion_ids)])
    return sequence_logprobs(model, ids, torch.ones_like(ids), mask)[1][0]


def test_one_step_equals_a_naive_per_example_computation_whatever_the_micro_batching():
    base, tokenizer = tiny()
    policy, reference = perturbed(base), base
    examples = tokenize_feedback(feedback_rows(8), tokenizer, max_length=64, max_prompt_length=32, group_size=4)
    hp = KTOHyperparameters(beta=0.5, desirable_weight=1.3, undesirable_weight=0.8, batch_size=4)
    n = len(examples)
    step = [6, 0, n - 1, 3, n - 2, 1]  # desirable examples first, then undesirable ones
    with torch.no_grad():
        kl = [naive_logp(policy, examples[i].prompt_ids, examples[i].kl_completion_ids)
              - naive_logp(reference, examples[i].prompt_ids, examples[i].kl_completion_ids) for i in step]
        z = max(0.0, float(sum(kl)) / len(step))
    assert z > 0  # the perturbed policy is far from the reference: the clamp is not what decides
    losses, chosen, rejected = [], [], []
    for i in step:
        e = examples[i]
        r = naive_logp(policy, e.prompt_ids, e.completion_ids) - naive_logp(reference, e.prompt_ids, e.completion_ids)
        if e.desirable:
            losses.append(1.3 * (1 - torch.sigmoid(0.5 * (r - z))))
            chosen.append(0.5 * r.item())
        else:
            losses.append(0.8 * (1 - torch.sigmoid(0.5 * (z - r))))
            rejected.append(0.5 * r.item())
    naive_loss = torch.stack(losses).sum() / len(step)
    naive_loss.backward()
    naive_grads = [p.grad.clone() for p in policy.parameters()]
    assert chosen and rejected

    table = FeedbackReference.precompute(reference, examples, PAD, 3, torch.device("cpu"))
    on_the_fly = FeedbackReference(model=reference)
    for micro_batches, ref in (([step], table), ([step[:1], step[1:4], step[4:]], table), ([step[:3], step[3:]],
                                                                                          on_the_fly)):
        policy.zero_grad()
        stats = accumulate_gradients(policy, ref, examples, micro_batches, PAD, hp, torch.device("cpu"), 32)
        expected = [naive_loss.item(), sum(chosen) / len(chosen), sum(rejected) / len(rejected),
                    sum(chosen) / len(chosen) - sum(rejected) / len(rejected), None, None, z]
        for got, want in zip(stats.tolist(), expected, strict=True):
            if want is not None:
                assert got == pytest.approx(want, abs=1e-5)
        for param, want in zip(policy.parameters(), naive_grads, strict=True):
            torch.testing.assert_close(param.grad, want, atol=1e-6, rtol=1e-4)


def test_a_step_without_one_side_reports_none_of_its_metrics():
    base, tokenizer = tiny()
    examples = tokenize_feedback([{"prompt": "a", "completion": "b", "label": True}] * 2, tokenizer, max_length=16,
                                 max_prompt_length=8, group_size=2)  # fmt: skip
    metrics = dict.fromkeys(METRIC_NAMES, 1.0)
    assert set(present_metrics(metrics, examples)) == METRIC_NAMES - {"rewards/rejected", "logps/rejected",
                                                                      "rewards/margins"}  # fmt: skip
    evaluated = {"eval/rewards/chosen": 1.0, "eval/rewards/rejected": 1.0, "eval/kl": 0.0}
    assert present_metrics(evaluated, examples, prefix="eval/") == {"eval/rewards/chosen": 1.0, "eval/kl": 0.0}


@pytest.mark.trains
@pytest.mark.parametrize("preference", [True, False])
def test_kto_learns_desirable_above_undesirable(preference):
    rows = uppercase_preference_rows(64, seed=1) if preference else feedback_rows(64, seed=1)
    callbacks = RecordingCallbacks()
    job = kto_job(1, learning_rate=1e-3, max_steps=30, batch_size=8, eval_every=30)
    result = trainers.run(job, TrainingData(train=rows, eval=rows[::4]), callbacks)
    assert (result.status, result.step) == ("completed", 30)
    first, last = callbacks.metrics[1], callbacks.metrics[30]
    assert METRIC_NAMES <= set(first)
    assert first["train/loss"] == pytest.approx(0.5, abs=1e-6)  # r = z_ref = 0: every loss is 1 − σ(0)
    assert first["kl"] == 0.0 and first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    late = [callbacks.metrics[s] for s in range(21, 31) if "rewards/margins" in callbacks.metrics[s]]
    assert sum(m["rewards/margins"] for m in late) / len(late) > 0.5
    assert last["train/loss"] < first["train/loss"] - 0.05
    assert last["eval/rewards/chosen"] > last["eval/rewards/rejected"] + 0.3 and last["eval/kl"] >= 0


@pytest.mark.trains
def test_results_do_not_depend_on_gradient_accumulation_precomputing_the_reference_or_a_resume(tmp_path):
    rows = feedback_rows(12, seed=2)
    runs = []
    for hp in ({"gradient_accumulation_steps": 1}, {"gradient_accumulation_steps": 3},
               {"gradient_accumulation_steps": 2, "precompute_ref_logprobs": False}):
        callbacks = RecordingCallbacks()
        trainers.run(kto_job(2, learning_rate=2e-3, max_steps=4, batch_size=6, **hp), TrainingData(train=rows),
                     callbacks)  # fmt: skip
        runs.append(callbacks.metrics)
    job = kto_job(2, learning_rate=2e-3, max_steps=4, batch_size=6)
    interrupted = RecordingCallbacks(tmp_path / "first", stop_after=2)
    assert trainers.run(job, TrainingData(train=rows), interrupted).step == 2
    resumed = RecordingCallbacks(tmp_path / "second")
    result = trainers.run(job, TrainingData(train=rows), resumed, resume_from=interrupted.checkpoints[2][0])
    assert (result.status, result.step) == ("completed", 4) and sorted(resumed.metrics) == [3, 4]
    runs.append(interrupted.metrics | resumed.metrics)
    assert runs[0][4]["kl"] > 0  # the estimate matters by the last step
    for other in runs[1:]:
        for step, metrics in runs[0].items():
            assert other[step] == pytest.approx(metrics, abs=1e-5), f"step {step}"
    # The policy reads each of a step's examples twice (its completion, then its mismatched one for z_ref).
    hp = job.hyperparameters
    examples = tokenize_feedback(rows, tiny()[1], max_length=hp.max_length, max_prompt_length=hp.max_prompt_length,
                                 group_size=6)  # fmt: skip
    order, total = BatchOrder(num_rows=len(examples), batch_size=6, seed=2), 0
    for step in range(1, 5):
        batch = [examples[i] for i in order.step_indices(step)]
        total += sum(collate_feedback(batch, PAD, kl=kl).attention_mask.sum().item() for kl in (False, True))
        assert runs[0][step]["train/num_tokens"] == total, f"step {step}"


@pytest.mark.trains
@pytest.mark.parametrize("preference", [False, True])
def test_cli_trains_kto_on_feedback_or_preference_files(tmp_path, preference):
    rows = uppercase_preference_rows(8) if preference else feedback_rows(8)
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = cli("kto", "--data", data, "--base-model", "builtin:tiny-llama", "--output", tmp_path / "run",
              "--max-steps", 2, "--learning-rate", 1e-3, "--batch-size", 4, "--desirable-weight", 1.5)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["step"] for line in lines] == [1, 2] and all(math.isfinite(line["train/loss"]) for line in lines)
    examples = 16 if preference else len(rows)
    assert f"{examples} train examples" in out.stderr
    assert (tmp_path / "run" / "checkpoint-2").is_dir()


@pytest.mark.trains
@pytest.mark.parametrize("precompute", [True, False])
def test_lora_uses_the_adapter_free_policy_as_its_reference(precompute):
    rows = uppercase_preference_rows(16, seed=6)
    callbacks = RecordingCallbacks()
    job = KTOJob(base_model="builtin:tiny-llama", seed=6, lora={"r": 8, "dropout": 0.0},
                 hyperparameters={"learning_rate": 5e-3, "max_steps": 8, "batch_size": 8,
                                  "precompute_ref_logprobs": precompute})  # fmt: skip
    trainers.run(job, TrainingData(train=rows), callbacks)
    assert callbacks.metrics[1]["train/loss"] == pytest.approx(0.5, abs=1e-6)  # fresh adapters: π = π_ref
    assert callbacks.metrics[8]["rewards/margins"] > 0.1
