"""Where the prompt ends in preference rows that carry it inside ``chosen`` and ``rejected``.

Exports such as Anthropic's hh-rlhf store each side of a pair as the whole dialogue, so the prompt
is whatever the two sides share at the start. These functions find that split the way TRL's
``extract_prompt`` does (the longest common prefix, each response keeping at least its last
element, a space before the first differing word going to the responses), with one difference for
plain text: a shared prefix that contains a turn marker is cut back to the end of its last marker,
so that responses which happen to start with the same words (``" I think"`` and ``" I don't"``)
keep those words. `trainers.spec.formats` validates what is left on each side.
"""

from __future__ import annotations

import os

# hh-rlhf's turn marker; the prompt of a plain dialogue ends just after the last one both sides share.
TURN_MARKERS = ("\n\nAssistant:",)


def shared_text_length(chosen: str, rejected: str) -> int:
    """Length of the prompt shared by two plain-text responses.

    Args:
        chosen: the whole chosen text (prompt and response).
        rejected: the whole rejected text.

    Returns:
        k such that ``chosen[:k]`` is the prompt and ``chosen[k:]``, ``rejected[k:]`` the responses:
        the end of the last turn marker in the common prefix when there is one; otherwise the
        common prefix less a trailing space, or, when one text starts with the whole other, the
        shorter length less one (TRL's ``extract_prompt``).
    """
    common = len(os.path.commonprefix([chosen, rejected]))
    shared = chosen[:common]
    marker_ends = [shared.rfind(marker) + len(marker) for marker in TURN_MARKERS if marker in shared]
    if marker_ends:
        return max(marker_ends)
    if common == min(len(chosen), len(rejected)):
        return max(common - 1, 0)
    if common > 0 and chosen[common - 1] == " ":
        return common - 1
    return common


def shared_message_count(chosen: list[dict], rejected: list[dict]) -> int:
    """Number of leading messages two conversations share, leaving each side at least one message.

    Args:
        chosen: the chosen conversation (validated messages).
        rejected: the rejected conversation.

    Returns:
        n such that ``chosen[:n]`` is the prompt: the longest run of equal leading messages, at most
        one less than the shorter conversation (TRL's ``extract_prompt``), so that identical
        conversations (ties) keep their last message as the responses.
    """
    limit = min(len(chosen), len(rejected)) - 1
    count = 0
    while count < limit and chosen[count] == rejected[count]:
        count += 1
    return count
