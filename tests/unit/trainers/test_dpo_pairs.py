"""DPO on one batch of pairs: IPO's length averaging, and reference log-probs precomputed vs on the fly."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tests.unit.trainers.trainer_fixtures import tiny
from trainers.data.preference import TokenizedPair, collate_pairs, tokenize_pairs
from trainers.data.synthetic import uppercase_preference_rows
from trainers.dpo import Reference, pair_losses_and_stats
from trainers.spec.config import DPOHyperparameters

V, TOKEN = 8, 5


class OneTokenFavoured(nn.Module):
    """A stand-in causal LM: at every position, logit `bias` on token 5 and 0 on the other 7."""

    def __init__(self, bias):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        logits = torch.zeros(*input_ids.shape, V)  # (B, T, V)
        logits[..., TOKEN] = 1.0
        return SimpleNamespace(logits=logits * self.bias)


def test_ipo_compares_length_averaged_logprobs():
    # The responses differ only in length (2 and 4 copies of token 5): their average log-ratios
    # are equal, so IPO's h is 0 and its loss is (0 − 1/(2β))² = 25 at β = 0.1.
    pair = TokenizedPair(prompt_ids=[1], chosen_ids=[TOKEN] * 2, rejected_ids=[TOKEN] * 4, truncated=False)
    batch = collate_pairs([pair], pad_token_id=0)
    policy, reference = OneTokenFavoured(2.0), OneTokenFavoured(0.0)
    a = 2 - math.log(math.exp(2) + 7)  # log π(5) per token
    b = -math.log(8)  # log π_ref(5) per token: uniform
    ref_logps = Reference(model=reference).logps(batch)  # (2,) summed: 2b and 4b
    assert ref_logps.tolist() == pytest.approx([2 * b, 4 * b])

    ipo = DPOHyperparameters(loss_type="ipo", beta=0.1)
    losses, stats = pair_losses_and_stats(policy, batch, ref_logps, ipo)
    assert losses.tolist() == pytest.approx([25.0])
    assert stats[1:3, 0].tolist() == pytest.approx([0.1 * (a - b)] * 2)  # equal averaged rewards
    assert stats[5:7, 0].tolist() == pytest.approx([a, a])  # logps/* are the averages

    # the summed log-probs of the sigmoid loss see h = 2(a − b) − 4(a − b) = −2(a − b)
    sigmoid = DPOHyperparameters(loss_type="sigmoid", beta=0.1)
    losses, _ = pair_losses_and_stats(policy, batch, ref_logps, sigmoid)
    assert losses.tolist() == pytest.approx([math.log(1 + math.exp(0.1 * 2 * (a - b)))])


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_precomputed_reference_gives_the_same_losses_as_on_the_fly(loss_type):
    reference, tokenizer = tiny()
    policy = copy.deepcopy(reference)
    with torch.no_grad():  # a policy that has moved away from the reference
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.01)
    rows = uppercase_preference_rows(10, seed=3)
    pairs = tokenize_pairs(rows, tokenizer, max_length=64, max_prompt_length=32)
    hp = DPOHyperparameters(loss_type=loss_type, beta=0.5)

    table = Reference.precompute(reference, pairs, tokenizer.pad_token_id, batch_size=3, device=torch.device("cpu"))
    indices = [7, 2, 9, 4]  # other neighbours, so other padding, than in the precomputing pass
    batch = collate_pairs([pairs[i] for i in indices], tokenizer.pad_token_id)
    on_the_fly = Reference(model=reference).logps(batch)

    torch.testing.assert_close(table.logps(batch, indices), on_the_fly, rtol=0, atol=1e-5)
    losses_table, stats_table = pair_losses_and_stats(policy, batch, table.logps(batch, indices), hp)
    losses_fly, stats_fly = pair_losses_and_stats(policy, batch, on_the_fly, hp)
    torch.testing.assert_close(losses_table, losses_fly, rtol=0, atol=1e-5)
    torch.testing.assert_close(stats_table, stats_fly, rtol=0, atol=1e-5)
    assert table.table.shape == (10, 2) and table.model is None  # no model behind a table
