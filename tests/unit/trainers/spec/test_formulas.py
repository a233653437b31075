"""A multi's calculate_output as an arithmetic formula over its graders' names: values, what is refused
at validation (names, constructs, weights) and what fails per completion (a grader error scoring 0)."""

import pytest

from trainers.spec.formulas import FormulaError, check_formula, formula_value
from trainers.spec.graders import evaluate
from trainers.spec.reward_validation import validate_reward_spec
from trainers.spec.rewards import reward_spec_adapter

CORRECT = {"type": "string_check", "name": "correct", "operation": "eq", "reference": "{{item.answer}}"}
FMT = {"type": "length", "name": "fmt", "max_chars": 4}


def multi(calculate_output, *graders):
    return {"type": "multi", "name": "total", "graders": list(graders) or [CORRECT, FMT],
            "calculate_output": calculate_output}


def grade(data, completion, item=None):
    spec = reward_spec_adapter.validate_python(data)
    return evaluate(spec, completion=completion, item=item or {"answer": "4"}, registry={})


def problems(data):
    return validate_reward_spec(data, registry={})


@pytest.mark.parametrize(("formula", "scores", "value"), [
    ("0.7 * correct + 0.3 * min(1, fmt)", {"correct": 1.0, "fmt": 2.0}, 1.0),
    ("0.7 * correct + 0.3 * min(1, fmt)", {"correct": 0.0, "fmt": 0.5}, 0.15),
    ("-a + b / 4", {"a": 1.0, "b": 2.0}, -0.5),
    ("a ** 2 + a ^ 2", {"a": 3.0}, 18.0),  # ^ is OpenAI's power, not xor, and binds as a power
    ("2 ^ 3 ^ 2 - -a ^ 2", {"a": 3.0}, 512 + 9),
    ("max(a, b, 0.25) - abs(-a)", {"a": 0.1, "b": 0.2}, 0.15),
    ("sqrt(a) + log(exp(2)) + floor(b) + ceil(b)", {"a": 9.0, "b": 1.5}, 3 + 2 + 1 + 2),
    ("clip(a, 0, 1) + clip(-a, 0, 1)", {"a": 7.0}, 1.0),
    ("(a + b) * 2", {"a": 1.0, "b": 2.0}, 6.0),
])
def test_formula_values(formula, scores, value):
    check_formula(formula, scores)
    assert formula_value(formula, scores) == pytest.approx(value)


@pytest.mark.parametrize(("formula", "words"), [
    ("correct + typo", ["'typo'", "no grader"]),
    ("correct +", ["not an arithmetic formula"]),
    ("correct.real", ["'correct.real' is not allowed"]),
    ("correct[0]", ["not allowed"]),
    ("correct if fmt else 0", ["not allowed"]),
    ("correct > fmt", ["not allowed"]),
    ("'a' * 3", ["not allowed"]),
    ("__import__('os').getcwd()", ["not a function a formula may call"]),
    ("pow(correct, 2)", ["'pow' is not a function"]),
    ("sqrt(correct, 2)", ["sqrt() takes 1"]),
    ("min(correct, key=fmt)", ["min() takes"]),
    ("clip(correct, 0)", ["clip() takes 3"]),
    ("(lambda: 1)()", ["not a function"]),
    ("True + correct", ["not allowed"]),
    ("correct - 1" + " + fmt" * 300, ["at most 1000 characters"]),
])
def test_a_bad_formula_is_refused_at_calculate_output(formula, words):
    found = problems(multi(formula))
    assert [field for field, _ in found] == ["reward.calculate_output"], found
    for word in words:
        assert word in found[0][1]


def test_a_name_that_is_not_an_identifier_cannot_be_read():
    found = problems(multi("fmt-1 + correct", CORRECT, {**FMT, "name": "fmt-1"}))
    assert found[0][0] == "reward.calculate_output" and "'fmt'" in found[0][1] and "identifier" in found[0][1]


def test_weights_with_a_formula_are_refused():
    found = problems(multi("correct + fmt", {**CORRECT, "weight": 2.0}, FMT))
    assert found == [("reward.calculate_output",
                      "Value error, 'correct + fmt' ignores weights, but graders[0] sets one: write the factor in "
                      "the formula")]


def test_a_formula_is_still_checked_when_a_grader_is_in_error():
    found = problems(multi("correct +", CORRECT, {"type": "length", "name": "fmt"}))
    assert sorted(field for field, _ in found) == ["reward.calculate_output", "reward.graders[1]"]


def test_the_named_combinations_keep_working():
    assert grade(multi("mean"), "4").reward == 1.0
    assert grade(multi("min"), "four").reward == 0.0  # "four" ≠ "4"; its length is within max_chars
    assert grade(multi("weighted_sum", {**CORRECT, "weight": 0.5}, FMT), "4").reward == 1.5


def test_a_formula_combines_the_graders_scores():
    result = grade(multi("0.7 * correct + 0.3 * min(1, fmt)"), "4")
    assert result.reward == pytest.approx(1.0) and result.per_grader == {"correct": 1.0, "fmt": 1.0}
    assert grade(multi("0.7 * correct + 0.3 * min(1, fmt)"), "five!").reward == pytest.approx(0.3 * 0.75)
    # A grader that errs scores 0 in the formula, as in the named combinations.
    result = grade(multi("correct + fmt"), "4", {"question": "?"})
    assert result.reward == 1.0
    assert result.errors == ["correct: {{item.answer}}: the prompt row has no field item.answer"]


@pytest.mark.parametrize(("formula", "why"), [
    ("fmt / correct", "ZeroDivisionError"),
    ("log(correct)", "ValueError: math domain error"),
    ("exp(1000 * fmt)", "OverflowError"),
    ("10 ** (400 * fmt)", "OverflowError"),
    ("(correct - 1) ** 0.5", "not a finite number"),
    ("1e308 * 10 * fmt", "gave inf, not a finite number"),
])
def test_a_formula_that_gives_no_finite_number_is_a_grader_error_scoring_zero(formula, why):
    result = grade(multi(formula), "no")  # correct 0.0, fmt 1.0
    assert result.reward == 0.0
    assert result.per_grader == {"correct": 0.0, "fmt": 1.0}
    assert len(result.errors) == 1 and result.errors[0].startswith("total: calculate_output: ")
    assert why in result.errors[0]


def test_a_formula_round_trips_through_json():
    spec = reward_spec_adapter.validate_python(multi("0.5 * correct + 0.5 * fmt"))
    assert reward_spec_adapter.validate_json(reward_spec_adapter.dump_json(spec)) == spec


def test_check_formula_names_the_unknown_name():
    with pytest.raises(FormulaError, match="'b'"):
        check_formula("a + b", ["a"])
