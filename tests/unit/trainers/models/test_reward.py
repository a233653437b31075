"""The reward model: loading, the reward at the last real token, and reward statistics."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification

from tests.unit.trainers.trainer_fixtures import tiny
from trainers.data.preference import collate_pairs, tokenize_pairs
from trainers.data.synthetic import uppercase_preference_rows
from trainers.models.reward import last_token_index, load_reward_model, reward_stats, rewards, stats_sample
from trainers.spec.errors import ModelNotFoundError


@pytest.fixture(scope="module")
def reward_model():
    return load_reward_model("builtin:tiny-llama")


def padded(rows: list[list[int]], pad: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), width), pad)  # (N, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (N, T)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def test_last_token_index_reads_the_mask():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 0, 3, 3]


@torch.no_grad()
def test_reward_is_read_at_the_last_real_token_whatever_the_padding(reward_model):
    model, tokenizer = reward_model
    rows = [tokenizer("short").input_ids, tokenizer("a somewhat longer text").input_ids]
    ids, mask = padded(rows, tokenizer.pad_token_id, width=30)
    base = rewards(model, ids, mask)  # (2,)

    # any pad count
    for width in (len(rows[1]), 25, 40):
        other = rewards(model, *padded(rows, tokenizer.pad_token_id, width))
        torch.testing.assert_close(other, base, rtol=0, atol=1e-5)
    # any token in the padded positions, the EOS id and the pad id included
    noise = torch.randint(0, 260, ids.shape, generator=torch.Generator().manual_seed(0))  # (N, T)
    scrambled = torch.where(mask.bool(), ids, noise)
    scrambled[0, -1] = tokenizer.eos_token_id
    torch.testing.assert_close(rewards(model, scrambled, mask), base, rtol=0, atol=1e-5)
    # each row alone, unpadded
    for i, row in enumerate(rows):
        alone = rewards(model, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long))
        torch.testing.assert_close(alone, base[i : i + 1], rtol=0, atol=1e-5)

    # a manual gather of the per-position scores at the last real token
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (N, T, H)
    scores = model.score(hidden)[..., 0]  # (N, T)
    manual = torch.stack([scores[i, len(row) - 1] for i, row in enumerate(rows)])
    torch.testing.assert_close(base, manual)
    # a pad id inside the text would fool the library's own pad-id pooling, not ours
    tricky = torch.tensor([[*rows[0], tokenizer.pad_token_id, 65]])
    tricky_mask = torch.ones_like(tricky)
    hidden = model.model(input_ids=tricky, attention_mask=tricky_mask).last_hidden_state
    torch.testing.assert_close(rewards(model, tricky, tricky_mask), model.score(hidden)[:, -1, 0])


def test_builtin_reward_model_is_deterministic_with_the_causal_lm_backbone(reward_model):
    model, tokenizer = reward_model
    torch.manual_seed(123)  # the global RNG plays no part
    again, _ = load_reward_model("builtin:tiny-llama")
    assert isinstance(model, LlamaForSequenceClassification) and model.config.num_labels == 1
    assert model.score.weight.shape == (1, model.config.hidden_size)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    causal, _ = tiny()
    backbone = causal.model.state_dict()
    assert model.model.state_dict().keys() == backbone.keys()
    assert all(torch.equal(model.model.state_dict()[k], backbone[k]) for k in backbone)
    assert model.score.weight.abs().sum() > 0
    assert tokenizer.pad_token_id != tokenizer.eos_token_id == model.config.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id


@torch.no_grad()
def test_save_and_reload_with_transformers_gives_the_same_rewards(reward_model, tmp_path):
    model, tokenizer = reward_model
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    ids, mask = padded([tokenizer("one").input_ids, tokenizer("and two").input_ids], tokenizer.pad_token_id, 12)

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ours, _ = load_reward_model(tmp_path)  # a saved reward model loads as it is

    expected = rewards(model, ids, mask)
    torch.testing.assert_close(rewards(reloaded, ids, mask), expected, rtol=0, atol=0)
    torch.testing.assert_close(rewards(ours, ids, mask), expected, rtol=0, atol=0)
    torch.testing.assert_close(reloaded(input_ids=ids, attention_mask=mask).logits[:, 0], expected)


def test_causal_lm_directory_gets_a_seeded_score_head(tmp_path):
    causal, tokenizer = tiny()
    causal.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    torch.manual_seed(1)
    first, _ = load_reward_model(tmp_path)
    torch.manual_seed(2)
    second, _ = load_reward_model(tmp_path)
    builtin, _ = load_reward_model("builtin:tiny-llama")

    assert isinstance(first, LlamaForSequenceClassification)
    assert torch.equal(first.score.weight, second.score.weight)
    assert torch.equal(first.score.weight, builtin.score.weight)
    assert torch.equal(first.model.embed_tokens.weight, causal.model.embed_tokens.weight)


@pytest.mark.parametrize("ref", ["builtin:gpt-17", "nobody/no-such-reward-model"])
def test_unknown_model_is_not_found_naming_it(ref):
    with pytest.raises(ModelNotFoundError, match=ref) as info:
        load_reward_model(ref)
    assert info.value.param == "base_model"


def test_directory_without_a_model_is_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match=str(tmp_path)):
        load_reward_model(tmp_path)


@torch.no_grad()
def test_reward_stats_are_the_mean_and_std_of_both_responses(reward_model):
    model, tokenizer = reward_model
    pairs = tokenize_pairs(uppercase_preference_rows(7), tokenizer, max_length=64, max_prompt_length=32)
    mean, std = reward_stats(model, pairs, tokenizer.pad_token_id, batch_size=3, device=torch.device("cpu"))
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    everything = rewards(model, batch.input_ids, batch.attention_mask)  # (14,)
    assert mean == pytest.approx(everything.mean().item(), abs=1e-6)
    assert std == pytest.approx(everything.std(correction=0).item(), abs=1e-6)
    assert not model.training


def test_stats_sample_is_fixed_and_bounded():
    assert stats_sample(100, 10, seed=3) == stats_sample(100, 10, seed=3)
    assert stats_sample(100, 10, seed=3) != stats_sample(100, 10, seed=4)
    assert stats_sample(5, 10, seed=0) == [0, 1, 2, 3, 4]
    sample = stats_sample(100, 10, seed=3)
    assert len(set(sample)) == 10 and sample == sorted(sample)


def test_rewards_of_length_buckets_equal_one_padded_forward(reward_model):
    model, tokenizer = reward_model
    rows = uppercase_preference_rows(6, seed=3)
    for i, row in enumerate(rows):
        row["chosen"] = row["chosen"] * (1 + 3 * i)  # lengths from 8 to 128 letters
    pairs = tokenize_pairs(rows, tokenizer, max_length=256, max_prompt_length=64)
    plain = collate_pairs(pairs, tokenizer.pad_token_id)
    grouped = collate_pairs(pairs, tokenizer.pad_token_id, bucket_overhead_tokens=4)
    assert len(grouped.buckets) > 1
    with torch.no_grad():
        expected = rewards(model, plain.input_ids, plain.attention_mask)
        got = rewards(model, grouped.input_ids, grouped.attention_mask, grouped.buckets)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_rewards_equal_the_two_row_rewards_with_gradients(attention):
    from trainers.models.loading import accepts_4d_attention_mask
    from trainers.models.reward import shared_prompt_rewards

    model, tokenizer = load_reward_model("builtin:tiny-llama")
    model.config._attn_implementation = attention
    assert accepts_4d_attention_mask(model)
    rows = uppercase_preference_rows(6, seed=5)
    for i, row in enumerate(rows):
        row["prompt"] = row["prompt"] * (1 + i)
        row["chosen"] = row["chosen"] * (1 + 2 * i)
    pairs = tokenize_pairs(rows, tokenizer, max_length=512, max_prompt_length=256)
    batch = collate_pairs(pairs, tokenizer.pad_token_id, bucket_overhead_tokens=4, shared_prompt=True)
    assert len(batch.shared) > 1
    grads = []
    for shared in (False, True):
        model.zero_grad()
        r = shared_prompt_rewards(model, batch.shared, 12) if shared else rewards(model, batch.input_ids,
                                                                                  batch.attention_mask)
        (r * torch.arange(12)).sum().backward()
        grads.append((r.detach(), model.score.weight.grad.clone()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-6)
