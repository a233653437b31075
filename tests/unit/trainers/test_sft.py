"""Supervised fine-tuning on builtin:tiny-llama: the loss and its independence from the layout, then training runs."""

import copy
import json

import pytest
import torch

import trainers
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, cli, tiny, write_jsonl
from trainers import SFTJob, TrainingData
from trainers.data.chat import ChatLayout, tokenize_chat
from trainers.models.checkpoint import MODEL_DIR
from trainers.sft import accumulate_gradients, token_losses
from trainers.spec.config import SFTHyperparameters

PAD = 256
METRIC_NAMES = {"train/loss", "train/mean_token_accuracy", "train/num_tokens", "train/learning_rate",
                "train/grad_norm", "train/epoch"}  # fmt: skip


def conversation(i: int) -> dict:
    """A small chat row whose answer is a function of the question."""
    messages = [{"role": "user", "content": f"Spell {i} backwards."}, {"role": "assistant", "content": str(i)[::-1]}]
    if i % 3 == 0:
        messages = [{"role": "system", "content": "Be terse."}, *messages,
                    {"role": "user", "content": "Again?"}, {"role": "assistant", "content": "No.", "weight": 0}]
    if i % 4 == 1:
        return {"prompt": f"Spell {i} backwards: ", "completion": str(i)[::-1]}
    return {"messages": messages}


ROWS = [conversation(i) for i in range(100, 116)]


def chats(rows, max_length=64):
    return [tokenize_chat(row, tiny()[1], assistant_only_loss=True, max_length=max_length) for row in rows]


def sft_job(seed=0, lora=None, **hyperparameters):
    return SFTJob(base_model="builtin:tiny-llama", seed=seed, lora=lora, hyperparameters=hyperparameters)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_give_the_losses_of_padded_rows(attention):
    model = copy.deepcopy(tiny()[0]).eval()
    model.set_attn_implementation(attention)
    rows = chats(ROWS[:7])
    padded = token_losses(model, ChatLayout(PAD, packed=False, max_length=64).collate(rows))
    packed_batch = ChatLayout(PAD, packed=True, max_length=64).collate(rows)
    assert 1 < packed_batch.input_ids.shape[0] < len(rows)  # several rows share a sequence
    # Flat: the packed sequences as one, as FlashAttention takes them; SDPA and eager read it alike.
    for layout in (packed_batch, ChatLayout(PAD, packed=True, max_length=64, flat=True).collate(rows)):
        packed = token_losses(model, layout)
        for a, b in zip(padded, packed, strict=True):
            torch.testing.assert_close(a.sum(), b.sum(), rtol=1e-5, atol=1e-5)
        assert padded[1].sum() == packed[1].sum()  # the same tokens predicted right
        assert torch.count_nonzero(padded[0]) == torch.count_nonzero(packed[0]) == sum(
            r.num_loss_tokens for r in rows)


def gradients(rows, indices, **hyperparameters):
    model = copy.deepcopy(tiny()[0]).train()
    hp = SFTHyperparameters(**hyperparameters)
    layout = ChatLayout(PAD, packed=hp.packing, max_length=hp.max_length)
    stats = accumulate_gradients(model, rows, indices, hp, torch.device("cpu"), layout)
    return stats, {name: p.grad.clone() for name, p in model.named_parameters()}


def test_the_step_loss_and_gradients_do_not_depend_on_micro_batching_or_packing():
    rows = chats(ROWS[:9])
    indices = [4, 0, 7, 2, 8]
    stats, grads = gradients(rows, indices, max_length=64)
    count = sum(rows[i].num_loss_tokens for i in indices)
    expected = sum(token_losses(tiny()[0], ChatLayout(PAD, False, 64).collate([rows[i]]))[0].sum().item()
                   for i in indices) / count  # fmt: skip
    assert stats[0].item() == pytest.approx(expected, rel=1e-5)  # Σ nll over the step's tokens / their count
    for settings in ({"gradient_accumulation_steps": 2}, {"gradient_accumulation_steps": 5}, {"packing": True},
                     {"packing": True, "gradient_accumulation_steps": 3}):  # fmt: skip
        other_stats, other_grads = gradients(rows, indices, max_length=64, **settings)
        torch.testing.assert_close(other_stats, stats, rtol=1e-5, atol=1e-6, msg=str(settings))
        for name, grad in grads.items():
            torch.testing.assert_close(other_grads[name], grad, rtol=1e-4, atol=1e-6, msg=f"{settings} {name}")


@pytest.mark.trains
def test_sft_memorises_a_small_chat_set():
    callbacks = RecordingCallbacks()
    job = sft_job(learning_rate=3e-3, max_steps=24, batch_size=8, eval_every=12)
    result = trainers.run(job, TrainingData(train=ROWS, eval=ROWS[:4]), callbacks)

    assert (result.status, result.step) == ("completed", 24)
    first, last = callbacks.metrics[1], callbacks.metrics[24]
    assert set(first) == METRIC_NAMES
    assert {"eval/loss", "eval/mean_token_accuracy"} <= set(callbacks.metrics[12]) & set(last)
    assert last["train/loss"] < 0.35 * first["train/loss"]
    assert last["train/mean_token_accuracy"] > first["train/mean_token_accuracy"] + 0.5
    assert last["eval/loss"] < callbacks.metrics[12]["eval/loss"]
    # Every step trains 8 whole rows, so 24 steps are 12 epochs of the 16 rows: every token 12 times.
    lengths = [len(c.input_ids) for c in chats(ROWS, max_length=1024)]
    assert last["train/num_tokens"] == 12 * sum(lengths)
    assert last["train/epoch"] == 12.0 and list(callbacks.checkpoints) == [24]


@pytest.mark.trains
def test_a_resumed_run_continues_as_the_uninterrupted_one(tmp_path):
    job = sft_job(3, learning_rate=2e-3, max_steps=6, batch_size=5, gradient_accumulation_steps=2, warmup_steps=2,
                  weight_decay=0.1, packing=True)  # fmt: skip
    data = TrainingData(train=ROWS[:12], eval=ROWS[12:])
    straight = RecordingCallbacks()
    trainers.run(job, data, straight)

    interrupted = RecordingCallbacks(tmp_path / "first", stop_after=4)
    assert trainers.run(job, data, interrupted).step == 4
    resumed = RecordingCallbacks(tmp_path / "second")
    result = trainers.run(job, data, resumed, resume_from=interrupted.checkpoints[4][0])
    assert (result.status, result.step) == ("completed", 6) and sorted(resumed.metrics) == [5, 6]
    combined = interrupted.metrics | resumed.metrics
    for step, metrics in straight.metrics.items():
        assert combined[step] == pytest.approx(metrics, abs=1e-6), f"step {step}"
    assert combined[6]["train/num_tokens"] > combined[4]["train/num_tokens"] > 0


@pytest.mark.trains
def test_lora_trains_adapters_only(tmp_path):
    callbacks = RecordingCallbacks(tmp_path)
    job = sft_job(lora={"r": 8, "alpha": 16}, learning_rate=1e-2, max_steps=12, batch_size=8)
    result = trainers.run(job, TrainingData(train=ROWS), callbacks)
    assert result.status == "completed"
    assert callbacks.metrics[12]["train/loss"] < callbacks.metrics[1]["train/loss"] - 0.5
    directory, info = callbacks.checkpoints[12]
    assert info["model"]["adapter"] is True and info["model"]["kind"] == "causal_lm"
    assert (directory / MODEL_DIR / "adapter_config.json").is_file()


@pytest.mark.trains
def test_cli_trains_chat_rows(tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", ROWS[:8])
    out = cli("sft", "--data", data, "--eval-data", data, "--base-model", "builtin:tiny-llama",
              "--output", tmp_path / "run", "--max-steps", 2, "--batch-size", 4, "--learning-rate", 1e-3,
              "--packing", "true", "--assistant-only-loss", "false")  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert lines[-1]["train/num_tokens"] > lines[0]["train/num_tokens"] > 0 and "eval/loss" in lines[-1]
    assert (tmp_path / "run" / "checkpoint-2" / "model" / "config.json").is_file()

    bad = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], {"messages": [{"role": "user", "content": "q"}]}])
    out = cli("sft", "--data", bad, "--base-model", "builtin:tiny-llama", "--output", tmp_path / "bad")
    assert out.returncode == 2 and "line 2: messages: must contain at least one assistant message" in out.stderr
