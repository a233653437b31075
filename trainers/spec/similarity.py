"""How similar two texts are, for ``text_similarity`` graders: fuzzy match, BLEU, ROUGE (torch-free).

Each metric is computed by a maintained library and scaled to [0, 1], 1.0 for identical texts:

- ``fuzzy_match``: rapidfuzz's ``fuzz.ratio`` / 100, the normalised Indel similarity
  ``1 − (insertions + deletions) / (len(a) + len(b))`` over characters, i.e. ``2·LCS / (len(a) + len(b))``
  (the ratio of Python's difflib, computed exactly). It is OpenAI's "normalised fuzzy ratio" and is
  symmetric and length-aware; rapidfuzz's ``partial_ratio``/``WRatio`` were not chosen because they
  score the best-matching *substring*, so a completion that pads the reference with anything
  would still score near 1.0, a reward a policy learns to exploit.
- ``bleu``: sacrebleu's ``sentence_bleu(input, [reference])`` / 100 (13a tokenisation, exponential
  smoothing, effective order: sacrebleu's defaults for one sentence), capped at 1.0 (floating point
  gives 100.00000000000004 for identical texts).
- ``rouge_1`` … ``rouge_5``, ``rouge_l``: the F-measure of rouge-score's ``RougeScorer`` (``rouge1`` …
  ``rouge5``, ``rougeL``; no stemming), reference as target and input as prediction. Its default
  tokenizer keeps only ``[a-z0-9]`` and would score every non-Latin text 0; ours lowercases and
  keeps runs of Unicode letters and digits, the same tokens for ASCII text (a run of a script
  written without spaces, such as Chinese, is one token). A text shorter than N tokens has no
  N-grams: its ROUGE-N is 0.0.

OpenAI's ``gleu`` and ``meteor`` are not offered, and ``cosine`` needs an embedding model this server
does not run; `UNSUPPORTED_METRICS` says why and what to use instead. The libraries are imported on
first use: ROUGE pulls in NLTK (about half a second), which an API process serving no such
grader need not load.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Literal

SimilarityMetric = Literal["fuzzy_match", "bleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"]

UNSUPPORTED_METRICS = {
    "cosine": "'cosine' compares embeddings and needs an embedding model, which this server does not run",
    "gleu": "'gleu' is not offered here",
    "meteor": "'meteor' needs the WordNet data of NLTK, which this server does not ship",
}
"""OpenAI's metrics refused here, with why."""

QUICK_SIMILARITY = 4_000_000
"""Bound on ``len(input) × len(reference)`` (characters) under which any metric is quick (under ~50 ms);
past it the grader runs it under its deadline, since ROUGE-L's longest common subsequence is a
pure-Python table of tokens × tokens cells (about 1.5 s for two texts of 3,000 words)."""

MAX_ROUGE_L_PAIRS = 25_000_000
"""Most ``tokens(input) × tokens(reference)`` ROUGE-L computes (about 4 s); past it the grader errs rather
than hold a thread for minutes or hours (two texts of 100,000 words would take about 5 hours)."""

_ALTERNATIVES = "use 'fuzzy_match', 'bleu', 'rouge_1' to 'rouge_5' or 'rouge_l'"
_TOKEN = re.compile(r"[^\W_]+")  # runs of Unicode letters and digits


def unsupported_metric_problem(metric: str) -> str:
    """The validation message for a metric OpenAI defines but this server does not compute."""
    return f"evaluation_metric {UNSUPPORTED_METRICS[metric]}: {_ALTERNATIVES}"


def similarity(metric: SimilarityMetric, text: str, reference: str) -> float:
    """How similar `text` is to `reference` under `metric`, in [0, 1].

    Args:
        metric: ``fuzzy_match``, ``bleu``, ``rouge_1`` … ``rouge_5`` or ``rouge_l`` (see the module).
        text: the rendered input, usually the completion.
        reference: the rendered reference.

    Returns:
        The similarity; 1.0 for identical texts (for ROUGE-N, texts of at least N tokens; for BLEU and
        ROUGE, not empty ones).

    Raises:
        SimilarityTooCostly: ROUGE-L on texts whose tokens make more than `MAX_ROUGE_L_PAIRS` pairs.
    """
    match metric:
        case "fuzzy_match":
            from rapidfuzz import fuzz

            return fuzz.ratio(text, reference) / 100.0
        case "bleu":
            import sacrebleu

            return min(1.0, sacrebleu.sentence_bleu(text, [reference]).score / 100.0)
        case "rouge_1" | "rouge_2" | "rouge_3" | "rouge_4" | "rouge_5" | "rouge_l":
            if metric == "rouge_l":
                pairs = len(_TOKEN.findall(text)) * len(_TOKEN.findall(reference))
                if pairs > MAX_ROUGE_L_PAIRS:
                    raise SimilarityTooCostly(
                        f"rouge_l compares every token of the input with every token of the reference, "
                        f"{pairs:,} pairs here, more than {MAX_ROUGE_L_PAIRS:,}: use rouge_1 to rouge_5 or bleu, "
                        "linear in the length, for texts this long"
                    )
            key = "rougeL" if metric == "rouge_l" else f"rouge{metric[-1]}"
            return float(_rouge_scorer(key).score(reference, text)[key].fmeasure)
        case _:
            raise ValueError(f"unknown evaluation_metric {metric!r}")


class SimilarityTooCostly(ValueError):
    """The texts are too long for the metric (see `MAX_ROUGE_L_PAIRS`)."""


class _UnicodeTokenizer:
    """rouge-score's tokenizer interface: lowercased runs of letters and digits, in any script."""

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text.lower())


@lru_cache(maxsize=8)
def _rouge_scorer(key: str) -> Any:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer([key], use_stemmer=False, tokenizer=_UnicodeTokenizer())
