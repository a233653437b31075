"""The language-modelling loss of supervised fine-tuning, as a pure function of logits (DESIGN §7, SFT).

Shapes: B sequences, T tokens, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainers.ops.logprobs import selective_log_softmax


def next_token_losses(logits: Tensor, input_ids: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token cross-entropy of next-token prediction, and whether the most likely token was right.

    ``nll[b, t] = −log softmax(logits[b, t])[input_ids[b, t + 1]] · loss_mask[b, t + 1]``,
    ``correct[b, t] = [argmax_v logits[b, t, v] = input_ids[b, t + 1]] · loss_mask[b, t + 1]``.
    Position t predicts token t + 1, so both are one shorter than the input; tokens with
    ``loss_mask = 0`` (prompts, padding, the first token of each packed row) contribute exactly 0.
    The SFT loss of a step is ``Σ nll / N`` with N the step's number of trained tokens over every
    micro-batch and process (TRL's ``mean_token_accuracy`` is ``Σ correct / N`` likewise), so it
    does not depend on how the step is split.

    Args:
        logits: (B, T, V) the model's logits on `input_ids`.
        input_ids: (B, T) token ids.
        loss_mask: (B, T) 1 on the tokens trained on, 0 elsewhere.

    Returns:
        nll: (B, T − 1) float32 masked negative log-likelihoods, differentiable.
        correct: (B, T − 1) float32 masked 0/1 accuracies, detached.
    """
    targets = input_ids[:, 1:]  # (B, T−1)
    mask = loss_mask[:, 1:].to(torch.float32)  # (B, T−1)
    shifted = logits[:, :-1]  # (B, T−1, V) position t predicts token t + 1
    nll = -selective_log_softmax(shifted, targets) * mask  # (B, T−1)
    correct = (shifted.detach().argmax(dim=-1) == targets).to(torch.float32) * mask  # (B, T−1)
    return nll, correct
