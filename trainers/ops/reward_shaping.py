"""Length-dependent reward shaping of the online-RL trainers (DESIGN §7).

DAPO's soft overlong punishment (Yu et al. 2025, §3.4, eq. 13, https://arxiv.org/abs/2503.14476):
a completion cut at the length limit is a noisy sample (a sound reasoning gets a low reward only for
its length), so instead the reward warns of the limit gradually, over the last L_cache tokens before
it. Shapes: B completions.
"""

from __future__ import annotations

from torch import Tensor


def overlong_penalty(lengths: Tensor, *, max_length: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment of each completion, a reward term ≤ 0 (Yu et al. 2025, eq. 13).

    With ``L_max`` = `max_length`, ``L_cache`` = `buffer` and ``|y|`` a completion's length::

        R(y) = 0                                   if |y| ≤ L_max − L_cache
             = (L_max − L_cache − |y|) / L_cache   if L_max − L_cache < |y| ≤ L_max
             = −1                                  if L_max < |y|

    times `factor` (verl's ``overlong_penalty_factor``; TRL's ``get_soft_overlong_punishment`` is
    factor 1). It is added to the task reward, before advantages.

    Args:
        lengths: (B,) completion lengths in tokens (the EOS, when sampled, counts).
        max_length: L_max, the most tokens a completion may have (``max_new_tokens``).
        buffer: L_cache, the tokens before L_max over which the penalty grows, 0 < L_cache ≤ L_max.
        factor: the penalty at L_max and beyond (≥ 0).

    Returns:
        (B,) float32 penalties in [−factor, 0], on the lengths' device.
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"the overlong buffer must be in (0, max_length={max_length}], got {buffer}")
    excess = lengths.float() - (max_length - buffer)  # (B,) tokens past the expected length
    ramp = -(excess.clamp(min=0) / buffer).clamp(max=1.0)  # (B,) 0 down to −1 at L_max, −1 beyond
    return ramp * factor  # (B,)

