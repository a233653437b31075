"""Packed layouts (GRPO's shared-prompt rows, the reward model's prompt ⊕ chosen ⊕ rejected rows) give
the same log-probs, rewards and gradients as one row per sequence, whatever the model's attention
pattern: full causal, a sliding window in every layer, or a per-layer mix of global and sliding layers."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from trainers.data.preference import TokenizedPair, collate_pairs
from trainers.models.loading import packs_exactly
from trainers.models.reward import shares_prompts
from trainers.reward_model import pair_losses_and_stats
from trainers.rl.response_logprobs import SharedPromptLayout, response_logprobs
from trainers.rl.rollout import Rollout
from trainers.spec.config import RewardModelHyperparameters

PAD, VOCAB, WINDOW = 0, 64, 4
SIZE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 16, "vocab_size": VOCAB, "pad_token_id": PAD}  # fmt: skip
MIXED = {"layer_types": ["sliding_attention", "full_attention"]}
PATTERNS = {  # model type → the config fields that set its attention pattern
    "llama": {},  # full causal attention: the packed layout stays in use
    "mistral": {"sliding_window": WINDOW},  # every layer slides
    "qwen2": {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1},  # full, then sliding
    "qwen3": {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1},
    "gemma2": {"sliding_window": WINDOW, **MIXED},
    "gemma3_text": {"sliding_window": WINDOW, **MIXED},
    "phi3": {"sliding_window": WINDOW},
}
# (model type, attention implementation): transformers gives Gemma 2 no SDPA attention.
CASES = [(t, a) for t in PATTERNS for a in ("sdpa", "eager") if (t, a) != ("gemma2", "sdpa")]


def build(model_type, head, attention=None, **overrides):
    attention = attention or ("eager" if model_type == "gemma2" else "sdpa")
    config = AutoConfig.for_model(model_type, **{**SIZE, **PATTERNS[model_type], **overrides}, num_labels=1)
    if model_type == "phi3":
        config.partial_rotary_factor = 1.0
    torch.manual_seed(0)
    if head == "lm":
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention)
    else:
        model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attention)
    return model.float().train()


def grouped_rollout():
    """Two prompts (6 and 9 tokens) with three completions each (3 to 10 tokens): every row is
    longer than the window, and each prompt is shared, as in a GRPO batch."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (6, 9)]
    lengths = [10, 3, 7, 5, 10, 8]
    B, P, A = len(lengths), 9, max(lengths)
    prompt_ids = torch.full((B, P), PAD)
    prompt_mask = torch.zeros((B, P), dtype=torch.long)
    response_ids = torch.full((B, A), PAD)
    response_mask = torch.zeros((B, A), dtype=torch.long)
    for row, n in enumerate(lengths):
        prompt = prompts[row // 3]
        prompt_ids[row, P - len(prompt) :] = torch.tensor(prompt)
        prompt_mask[row, P - len(prompt) :] = 1
        response_ids[row, :n] = torch.randint(1, VOCAB, (n,), generator=g)
        response_mask[row, :n] = 1
    return Rollout(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids, response_mask=response_mask,
        logprobs=torch.zeros((B, A)), ended_with_eos=torch.zeros(B, dtype=torch.bool),
        response_lengths=torch.tensor(lengths), temperature=1.0,
    )  # fmt: skip


def row_per_completion_logprobs(model, rollout):
    """The reference: each completion in its own row under the model's own (2D-mask) attention."""
    input_ids, attention_mask, position_ids = rollout.model_inputs()
    A = rollout.response_ids.shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits[:, -A - 1 : -1]
    logp = logits.log_softmax(-1).gather(-1, rollout.response_ids[..., None]).squeeze(-1)  # (B, A)
    return logp * rollout.response_mask


def values_and_grads(model, compute):
    model.zero_grad()
    values = compute()
    (values * torch.linspace(0.5, 2.0, values.numel()).reshape(values.shape)).sum().backward()
    return values.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def assert_same(got, expected):
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-5)
    assert len(got[1]) == len(expected[1])
    for a, b in zip(got[1], expected[1], strict=True):  # 1e-4 of each gradient's largest entry
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * float(b.abs().max()) + 1e-8)


@pytest.mark.parametrize(("model_type", "attention"), CASES)
def test_grpo_log_probs_and_gradients_equal_one_row_per_completion(model_type, attention):
    model = build(model_type, "lm", attention)
    rollout = grouped_rollout()
    assert SharedPromptLayout.of(rollout) is not None  # the rollout would be packed if the model allowed it
    got = values_and_grads(model, lambda: response_logprobs(model, rollout, 1.0))
    assert_same(got, values_and_grads(model, lambda: row_per_completion_logprobs(model, rollout)))


@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "gemma2"])
def test_sequences_within_the_window_keep_the_packed_layout_and_its_results(model_type):
    model = build(model_type, "lm", sliding_window=19)  # the longest row: 9 prompt + 10 response tokens
    rollout = grouped_rollout()
    assert packs_exactly(model, 19)
    assert not packs_exactly(model, 20)
    got = values_and_grads(model, lambda: response_logprobs(model, rollout, 1.0))
    assert_same(got, values_and_grads(model, lambda: row_per_completion_logprobs(model, rollout)))


def test_only_full_or_windowed_attention_on_short_enough_rows_is_packed():
    assert packs_exactly(build("llama", "lm"), 10_000)
    assert not packs_exactly(build("mistral", "lm"), WINDOW + 1)
    assert packs_exactly(build("mistral", "lm"), WINDOW)
    assert not packs_exactly(build("gemma2", "lm"), WINDOW + 1)
    flash = build("llama", "lm")
    flash.config._attn_implementation = "flash_attention_2"  # takes no 4D mask
    assert not packs_exactly(flash, 1)


def preference_pairs():
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(1, VOCAB, (n,), generator=g).tolist()

    return [TokenizedPair(ids(p), ids(c), ids(r), False) for p, c, r in [(5, 7, 4), (8, 3, 9), (3, 6, 6), (7, 2, 5)]]


@pytest.mark.parametrize(("model_type", "attention"), [c for c in CASES if c[0] not in ("qwen3", "phi3")])
def test_reward_model_pair_losses_and_gradients_equal_the_two_row_layout(model_type, attention):
    model = build(model_type, "seq_cls", attention)
    pairs, hp = preference_pairs(), RewardModelHyperparameters()
    margins = torch.zeros(len(pairs))
    trained = collate_pairs(pairs, PAD, shared_prompt=shares_prompts(model, pairs))
    assert bool(trained.shared) == (model_type == "llama")  # rows longer than the window: two rows per pair
    two_rows = collate_pairs(pairs, PAD)
    assert_same(
        values_and_grads(model, lambda: pair_losses_and_stats(model, trained, margins, hp)[0]),
        values_and_grads(model, lambda: pair_losses_and_stats(model, two_rows, margins, hp)[0]),
    )
