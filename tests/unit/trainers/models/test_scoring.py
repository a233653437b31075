"""Scoring texts and prompt/response pairs with saved reward-model checkpoints (full and LoRA)."""

import json
import shutil

import pytest
import torch

import trainers
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, tiny
from trainers import RewardModelJob, TrainingData, UserError
from trainers.data.preference import collate_pairs, tokenize_pairs
from trainers.data.synthetic import uppercase_preference_rows
from trainers.models.checkpoint import MODEL_DIR, MODEL_INFO_FILE, write_model_info
from trainers.models.reward import load_reward_model, rewards
from trainers.models.scoring import score
from trainers.spec.config import LoRAConfig

LEARNING = {"learning_rate": 1e-3, "max_steps": 20, "batch_size": 8}  # as in test_reward.py
HELD_OUT = uppercase_preference_rows(50, seed=2024)


def trained_checkpoint(root, lora=None):
    callbacks = RecordingCallbacks(root)
    job = RewardModelJob(base_model="builtin:tiny-llama", seed=3, lora=lora, hyperparameters=LEARNING)
    trainers.run(job, TrainingData(train=uppercase_preference_rows(128, seed=3)), callbacks)
    directory, info = callbacks.checkpoints[20]
    return directory / MODEL_DIR, info["model"]


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory):
    return trained_checkpoint(tmp_path_factory.mktemp("full"))


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory):
    return trained_checkpoint(tmp_path_factory.mktemp("lora"), lora=LoRAConfig(r=8))


@torch.no_grad()
def chosen_rewards(model_dir, rows):
    """Rewards of the chosen responses of `rows`, batched and tokenised as in training."""
    model, tokenizer = load_reward_model(model_dir)
    pairs = tokenize_pairs(rows, tokenizer, max_length=512, max_prompt_length=256)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    return rewards(model, batch.input_ids, batch.attention_mask)[: len(rows)].tolist()  # the chosen rows


def ranked_correctly(model_dir, rows):
    chosen = score(model_dir, [{"prompt": r["prompt"], "response": r["chosen"]} for r in rows])
    rejected = score(model_dir, [{"prompt": r["prompt"], "response": r["rejected"]} for r in rows])
    return sum(c["score"] > r["score"] for c, r in zip(chosen, rejected, strict=True)) / len(rows)


@pytest.mark.trains
def test_scores_rank_held_out_chosen_responses_first(full_checkpoint):
    model_dir, _ = full_checkpoint
    assert ranked_correctly(model_dir, HELD_OUT) > 0.9


@pytest.mark.trains
def test_a_pair_scores_the_reward_training_reads_and_is_normalised_with_the_checkpoint_stats(full_checkpoint):
    model_dir, info = full_checkpoint
    rows = HELD_OUT[:5]
    results = score(model_dir, [{"prompt": r["prompt"], "response": r["chosen"]} for r in rows], batch_size=2)

    assert [r["score"] for r in results] == pytest.approx(chosen_rewards(model_dir, rows), abs=1e-5)
    for result in results:
        assert result["normalized"] == pytest.approx((result["score"] - info["reward_mean"]) / info["reward_std"])


@pytest.mark.trains
def test_a_text_is_scored_as_it_is_with_eos_appended(full_checkpoint):
    model_dir, _ = full_checkpoint
    row = HELD_OUT[0]
    # The byte-level tokenizer splits "prompt" + "response" exactly as the two parts, so the whole
    # text and the pair are the same tokens: BOS, the bytes, EOS.
    items = [{"text": row["prompt"] + row["chosen"]}, {"prompt": row["prompt"], "response": row["chosen"]}]
    text, pair = score(model_dir, items)
    assert text["score"] == pytest.approx(pair["score"], abs=1e-6)

    model, tokenizer = load_reward_model(model_dir)
    ids = tokenizer(row["prompt"] + row["chosen"]).input_ids + [tokenizer.eos_token_id]
    with torch.no_grad():
        expected = rewards(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    assert text["score"] == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.trains
def test_conversational_items_use_the_chat_template(full_checkpoint):
    model_dir, _ = full_checkpoint
    rows = uppercase_preference_rows(3, seed=7, conversational=True)
    results = score(model_dir, [{"prompt": r["prompt"], "response": r["chosen"]} for r in rows])
    assert [r["score"] for r in results] == pytest.approx(chosen_rewards(model_dir, rows), abs=1e-5)


@pytest.mark.trains
def test_an_adapter_checkpoint_scores_through_its_base(lora_checkpoint):
    model_dir, info = lora_checkpoint
    assert (model_dir / "adapter_config.json").is_file() and not (model_dir / "model.safetensors").exists()
    assert info["adapter"] is True
    assert ranked_correctly(model_dir, HELD_OUT) > 0.9
    results = score(model_dir, [{"text": "say: hi\nHELLO"}])
    assert set(results[0]) == {"score", "normalized"}


@pytest.mark.trains
def test_without_statistics_the_normalised_score_is_left_out(full_checkpoint, tmp_path):
    model_dir, _ = full_checkpoint
    copy = shutil.copytree(model_dir, tmp_path / "model")
    (copy / MODEL_INFO_FILE).unlink()  # a reward model from elsewhere
    [result] = score(copy, [{"text": "say: hi\nHELLO"}])
    assert set(result) == {"score"}


def test_a_causal_lm_is_not_a_reward_model(tmp_path):
    causal, tokenizer = tiny()
    causal.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="no sequence-classification head"):
        score(tmp_path, [{"text": "hello"}])
    write_model_info(tmp_path, {"kind": "causal_lm", "adapter": False, "base_model": "builtin:tiny-llama"})
    with pytest.raises(UserError, match="'causal_lm' model, not a reward model"):
        score(tmp_path, [{"text": "hello"}])


@pytest.mark.trains
def test_a_missing_directory_and_malformed_items_are_user_errors(full_checkpoint, tmp_path):
    model_dir, _ = full_checkpoint
    with pytest.raises(UserError, match="is not a directory"):
        score(tmp_path / "nothing", [{"text": "hello"}])
    with pytest.raises(UserError, match=r"items\[1\]: expected"):
        score(model_dir, [{"text": "fine"}, {"prompt": "no response"}])
    with pytest.raises(UserError, match=r"items\[0\]\.prompt: expected") as refused:
        score(model_dir, [{"prompt": [{"role": "user"}], "response": "x"}])
    assert refused.value.param == "items[0].prompt"
    with pytest.raises(UserError, match="nothing to score"):
        score(model_dir, [{"prompt": "", "response": ""}])


@pytest.mark.trains
def test_the_model_info_file_is_json_with_the_statistics(full_checkpoint):
    model_dir, info = full_checkpoint
    assert json.loads((model_dir / MODEL_INFO_FILE).read_text()) == info
