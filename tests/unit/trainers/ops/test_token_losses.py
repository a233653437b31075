import pytest
import torch
import torch.nn.functional as F

from trainers.ops.token_losses import next_token_losses


def naive(logits, input_ids, loss_mask):
    """Cross-entropy and accuracy token by token, in plain loops."""
    B, T, _ = logits.shape
    nll, correct = torch.zeros(B, T - 1), torch.zeros(B, T - 1)
    for b in range(B):
        for t in range(T - 1):
            if loss_mask[b, t + 1]:
                nll[b, t] = F.cross_entropy(logits[b, t].double(), input_ids[b, t + 1]).float()
                correct[b, t] = float(logits[b, t].argmax() == input_ids[b, t + 1])
    return nll, correct


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_next_token_losses_match_a_naive_loop(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 6, 11, generator=g) * 3).to(dtype)
    input_ids = torch.randint(0, 11, (3, 6), generator=g)
    loss_mask = torch.randint(0, 2, (3, 6), generator=g)
    nll, correct = next_token_losses(logits, input_ids, loss_mask)
    expected_nll, expected_correct = naive(logits.float(), input_ids, loss_mask)
    assert nll.dtype == torch.float32 and nll.shape == (3, 5)
    torch.testing.assert_close(nll, expected_nll, rtol=1e-5, atol=1e-5)
    assert torch.equal(correct, expected_correct)


def test_masked_tokens_contribute_nothing_and_only_nll_carries_gradients():
    logits = torch.randn(1, 4, 5, requires_grad=True)
    input_ids = torch.tensor([[1, 2, 3, 4]])
    nll, correct = next_token_losses(logits, input_ids, torch.tensor([[1, 0, 1, 0]]))
    assert nll[0, 0] == 0 and nll[0, 2] == 0 and nll[0, 1] > 0  # token 0 is never a target
    nll.sum().backward()
    assert logits.grad[0, 1].abs().sum() > 0 and logits.grad[0, [0, 2, 3]].abs().sum() == 0
    assert not correct.requires_grad
