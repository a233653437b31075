"""text_similarity graders: each metric's value on identical, disjoint and partly overlapping texts
(computed by hand), pass_threshold, templates, the metrics refused, and long texts under the deadline."""

import math

import pytest

from trainers.spec import graders
from trainers.spec.graders import evaluate
from trainers.spec.reward_validation import validate_reward_spec
from trainers.spec.rewards import reward_spec_adapter
from trainers.spec.similarity import similarity

METRICS = ["fuzzy_match", "bleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"]
REFERENCE = "the cat sat on the mat"
PARTIAL = "the cat is on the mat"


def spec(metric="rouge_1", **fields):
    return reward_spec_adapter.validate_python(
        {"type": "text_similarity", "name": "sim", "evaluation_metric": metric, "reference": "{{item.answer}}"} | fields
    )


def grade(reward, completion, item):
    return evaluate(reward, completion=completion, item=item, registry={})


@pytest.mark.parametrize("metric", METRICS)
def test_identical_texts_score_one_and_disjoint_texts_zero(metric):
    assert similarity(metric, REFERENCE, REFERENCE) == pytest.approx(1.0)
    assert similarity(metric, REFERENCE, REFERENCE) <= 1.0  # BLEU's 100.00000000000004 is capped
    assert similarity(metric, "alpha", "omicron") == 0.0  # no character or word in common


def test_partial_overlap_values_computed_by_hand():
    # fuzzy_match: 2·LCS / (len(a) + len(b)); "the cat " + "s" (of "is"/"sat") + " on the mat": LCS 20, 21 + 22 chars.
    assert similarity("fuzzy_match", PARTIAL, REFERENCE) == pytest.approx(40 / 43)
    # ROUGE: 6 tokens each. Unigrams in common: the ×2, cat, on, mat = 5 → P = R = F = 5/6.
    assert similarity("rouge_1", PARTIAL, REFERENCE) == pytest.approx(5 / 6)
    # Bigrams in common: "the cat", "on the", "the mat": 3 of 5 each → 0.6; trigram "on the mat": 1 of 4.
    assert similarity("rouge_2", PARTIAL, REFERENCE) == pytest.approx(0.6)
    assert similarity("rouge_3", PARTIAL, REFERENCE) == pytest.approx(0.25)
    assert similarity("rouge_4", PARTIAL, REFERENCE) == 0.0
    # Longest common subsequence: the cat on the mat, 5 tokens → 5/6.
    assert similarity("rouge_l", PARTIAL, REFERENCE) == pytest.approx(5 / 6)
    # Sentence BLEU: precisions 5/6, 3/5, 1/4 and 0/3, which exponential smoothing makes 1/(2·3); equal
    # lengths, so no brevity penalty: the geometric mean of the four.
    assert similarity("bleu", PARTIAL, REFERENCE) == pytest.approx((5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25)


def test_rouge_reads_words_of_any_script_and_ignores_case():
    assert similarity("rouge_1", "Добрый день", "добрый день") == 1.0
    assert similarity("rouge_1", "Добрый вечер", "добрый день") == pytest.approx(0.5)
    assert similarity("rouge_1", "The CAT!", "the cat") == 1.0


def test_a_text_shorter_than_n_tokens_has_no_n_grams():
    assert similarity("rouge_2", "hello", "hello") == 0.0
    assert similarity("rouge_1", "hello", "hello") == 1.0


def test_the_grader_renders_its_templates_and_scores_the_similarity():
    result = grade(spec("rouge_1", weight=2.0), PARTIAL, {"answer": REFERENCE})
    assert result.per_grader == {"sim": pytest.approx(5 / 6)}
    assert result.reward == pytest.approx(2 * 5 / 6) and result.errors == []
    literal = spec("fuzzy_match", input="{{item.given}}", reference="abc")
    assert grade(literal, "ignored", {"given": "abd"}).reward == pytest.approx(2 / 3)


def test_pass_threshold_makes_the_score_one_or_zero():
    assert grade(spec("rouge_1", pass_threshold=0.8), PARTIAL, {"answer": REFERENCE}).reward == 1.0
    assert grade(spec("rouge_1", pass_threshold=0.9), PARTIAL, {"answer": REFERENCE}).reward == 0.0
    exact = 5 / 6  # at the threshold passes (OpenAI: "greater than or equal")
    assert grade(spec("rouge_1", pass_threshold=exact), PARTIAL, {"answer": REFERENCE}).reward == 1.0


def test_a_field_the_row_lacks_is_a_grader_error_scoring_zero():
    result = grade(spec(), PARTIAL, {"question": "?"})
    assert result.reward == 0.0 and result.per_grader == {"sim": 0.0}
    assert result.errors == ["sim: {{item.answer}}: the prompt row has no field item.answer"]


@pytest.mark.parametrize(("metric", "why"), [
    ("cosine", "needs an embedding model"), ("gleu", "not offered"), ("meteor", "WordNet"),
])
def test_metrics_not_offered_are_refused_at_evaluation_metric(metric, why):
    problems = validate_reward_spec(
        {"type": "text_similarity", "name": "s", "evaluation_metric": metric, "reference": "x"}, registry={}
    )
    assert [field for field, _ in problems] == ["reward.evaluation_metric"]
    assert "evaluation_metric" in problems[0][1] and why in problems[0][1] and "'bleu'" in problems[0][1]


@pytest.mark.parametrize(("fields", "field"), [
    ({"evaluation_metric": "jaccard"}, "reward.evaluation_metric"),
    ({"reference": "{{item}}"}, "reward.reference"),
    ({"input": "{{sample.output_json}}"}, "reward.input"),
    ({"pass_threshold": 1.5}, "reward.pass_threshold"),
    ({"extra": 1}, "reward.extra"),
])
def test_bad_fields_are_located(fields, field):
    data = {"type": "text_similarity", "name": "s", "evaluation_metric": "bleu", "reference": "x"} | fields
    assert [f for f, _ in validate_reward_spec(data, registry={})] == [field]


def test_a_long_text_is_graded_under_the_deadline(monkeypatch):
    monkeypatch.setattr(graders, "GRADER_TIMEOUT_S", 0.05)
    words = " ".join(f"w{i % 97}" for i in range(2_500))  # ROUGE-L on 2,500² tokens: about a second in Python
    result = grade(spec("rouge_l"), words, {"answer": words})
    assert result.reward == 0.0
    assert result.errors == ["sim: the rouge_l similarity did not return within 0.05 s"]
    monkeypatch.setattr(graders, "GRADER_TIMEOUT_S", 10)
    huge = " ".join(["word"] * 6_000)  # 36 million pairs: refused before any work
    result = grade(spec("rouge_l"), huge, {"answer": huge})
    assert result.reward == 0.0 and "36,000,000 pairs here, more than 25,000,000" in result.errors[0]
    assert grade(spec("rouge_2"), huge, {"answer": huge}).reward == pytest.approx(1.0)  # linear metrics still run
    short = grade(spec("rouge_l"), PARTIAL, {"answer": REFERENCE})  # small texts run inline, whatever the timeout
    assert math.isclose(short.reward, 5 / 6)
