from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tests.unit.trainers.trainer_fixtures import tiny
from trainers.ops.logprobs import selective_log_softmax, sequence_logprobs


def naive_logprobs(logits, index):
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)


class FixedLogits(nn.Module):
    """A stand-in causal LM that returns given logits whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return SimpleNamespace(logits=self.logits)


@pytest.mark.parametrize("shape", [(7, 11), (3, 5, 11), (2, 3, 4, 11)])
def test_selective_log_softmax_matches_the_naive_version(shape):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, generator=g) * 5
    index = torch.randint(0, shape[-1], shape[:-1], generator=g)
    torch.testing.assert_close(selective_log_softmax(logits, index), naive_logprobs(logits, index))


def test_selective_log_softmax_in_bfloat16_is_close_and_float32():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 6, 50, generator=g) * 3).to(torch.bfloat16)
    index = torch.randint(0, 50, (2, 6), generator=g)
    out = selective_log_softmax(logits, index)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, naive_logprobs(logits, index))


def test_selective_log_softmax_gradient_matches():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 4, 9, generator=g, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    index = torch.randint(0, 9, (2, 4), generator=g)
    selective_log_softmax(a, index).sum().backward()
    naive_logprobs(b, index).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_sequence_logprobs_matches_naive_with_temperature_and_mask(temperature):
    g = torch.Generator().manual_seed(3)
    B, T, V = 3, 8, 13
    logits = torch.randn(B, T, V, generator=g) * 4
    input_ids = torch.randint(0, V, (B, T), generator=g)
    attention_mask = torch.ones(B, T, dtype=torch.long)
    loss_mask = torch.zeros(B, T, dtype=torch.long)
    loss_mask[:, 4:7] = 1  # response at positions 4..6, padding at 7
    attention_mask[:, 7] = 0

    per_token, total = sequence_logprobs(FixedLogits(logits), input_ids, attention_mask, loss_mask, temperature)

    expected = naive_logprobs(logits[:, :-1] / temperature, input_ids[:, 1:]) * loss_mask[:, 1:]
    assert per_token.shape == (B, T - 1) and total.shape == (B,)
    torch.testing.assert_close(per_token, expected)
    torch.testing.assert_close(total, expected.sum(-1))


def test_prompt_and_padding_logits_do_not_change_response_logprobs():
    g = torch.Generator().manual_seed(4)
    B, T, V = 2, 9, 10
    logits = torch.randn(B, T, V, generator=g)
    input_ids = torch.randint(0, V, (B, T), generator=g)
    attention_mask = torch.ones(B, T, dtype=torch.long)
    loss_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1, 0, 0]])
    _, total = sequence_logprobs(FixedLogits(logits), input_ids, attention_mask, loss_mask)

    # position t predicts token t + 1: positions whose next token is not scored are free to change
    unscored = torch.zeros(B, T, dtype=torch.bool)
    unscored[:, :-1] = loss_mask[:, 1:] == 0
    unscored[:, -1] = True
    scrambled = torch.where(unscored.unsqueeze(-1), torch.randn(B, T, V, generator=g) * 100, logits)
    _, total_scrambled = sequence_logprobs(FixedLogits(scrambled), input_ids, attention_mask, loss_mask)
    torch.testing.assert_close(total, total_scrambled)


def test_pad_token_ids_do_not_change_response_logprobs_of_a_real_model():
    model, tokenizer = tiny()
    input_ids = torch.tensor([[257, 104, 105, 72, 73, 258, 256, 256], [257, 97, 98, 99, 65, 66, 67, 258]])
    attention_mask = (input_ids != tokenizer.pad_token_id).long()
    loss_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        _, total = sequence_logprobs(model, input_ids, attention_mask, loss_mask)
        other = input_ids.clone()
        other[0, 6:] = torch.tensor([5, 77])  # garbage where the padding was
        _, total_other = sequence_logprobs(model, other, attention_mask, loss_mask)
    torch.testing.assert_close(total, total_other, rtol=0, atol=1e-6)


def test_reference_logprobs_of_a_peft_model_are_its_base_models_in_eval_mode():
    import copy

    from trainers.models.lora import apply_lora
    from trainers.ops.logprobs import reference_sequence_logprobs
    from trainers.spec.config import LoRAConfig

    base, tokenizer = tiny()
    policy = apply_lora(copy.deepcopy(base), LoRAConfig(r=4, dropout=0.5), task="causal_lm").train()
    with torch.no_grad():  # move the adapter away from its zero start
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    input_ids = torch.tensor([[257, 104, 105, 72, 73, 258]])
    mask = torch.ones_like(input_ids)
    loss_mask = torch.tensor([[0, 0, 0, 1, 1, 1]])

    reference = reference_sequence_logprobs(policy, input_ids, mask, loss_mask)
    assert policy.training  # the mode it was in

    with torch.no_grad():
        _, expected = sequence_logprobs(base, input_ids, mask, loss_mask)
        _, adapted = sequence_logprobs(policy.eval(), input_ids, mask, loss_mask)
    torch.testing.assert_close(reference, expected, rtol=0, atol=1e-6)  # adapter off, no dropout
    assert not torch.allclose(adapted, expected, atol=1e-3)  # and back on afterwards
    assert not reference.requires_grad


def test_totals_of_length_buckets_equal_one_padded_forward_with_gradients():
    from trainers.data.preference import collate_pairs, tokenize_pairs
    from trainers.data.synthetic import uppercase_preference_rows
    from trainers.ops.logprobs import sequence_logprob_totals

    model, tokenizer = tiny()
    rows = uppercase_preference_rows(5, seed=2)
    for i, row in enumerate(rows):
        row["rejected"] = row["rejected"] * (1 + 4 * i)  # lengths from 8 to 136 letters
    pairs = tokenize_pairs(rows, tokenizer, max_length=256, max_prompt_length=64)
    plain = collate_pairs(pairs, tokenizer.pad_token_id)
    grouped = collate_pairs(pairs, tokenizer.pad_token_id, bucket_overhead_tokens=4)
    assert len(grouped.buckets) > 1 and grouped.buckets[0][1] < plain.input_ids.shape[1]

    grads = []
    for batch in (plain, grouped):
        model.zero_grad()
        total = sequence_logprob_totals(model, batch.input_ids, batch.attention_mask, batch.loss_mask, batch.buckets)
        total.sum().backward()
        grads.append((total.detach(), model.lm_head.weight.grad.clone()))
    _, expected = sequence_logprobs(model, plain.input_ids, plain.attention_mask, plain.loss_mask)
    torch.testing.assert_close(grads[1][0], expected.detach(), rtol=1e-6, atol=1e-5)  # totals reach -500
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-6)

