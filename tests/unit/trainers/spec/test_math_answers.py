"""Final answers of math problems: where they are found, when two are equal, the `math_answer` reward function."""

import math

import pytest

import trainers
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks
from trainers import GRPOJob, TrainingData
from trainers.spec import graders, math_answers
from trainers.spec.reward_functions import BUILTIN_FUNCTIONS, load_registry, math_answer
from trainers.spec.rewards import reward_spec_adapter

GSM8K = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                     "How many clips did Natalia sell altogether in April and May?",
         "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                   "altogether in April and May.\n#### 72"}  # fmt: skip
GRADER = {"type": "function", "name": "math", "function": "math_answer"}


def test_the_reference_is_what_follows_the_last_gsm8k_marker_else_the_whole_field():
    assert math_answers.reference_text(GSM8K["answer"]) == "72"
    assert math_answers.reference_text("  \\frac{1}{2} ") == "\\frac{1}{2}"
    assert math_answers.reference_text("a #### 1\nb #### 2,000") == "2,000"
    assert math_answers.reference_text("So $x = 1$ and $\\boxed{\\frac{1}{2}}$.") == "\\boxed{\\frac{1}{2}}$."


def test_the_answer_region_is_the_line_after_the_last_marker_else_from_the_last_box_else_the_end():
    assert math_answers.answer_region("work... #### 18\nthen 5 more words") == "18"
    assert math_answers.answer_region("\\boxed{3} no, \\boxed{4} since 7") == "\\boxed{4} since 7"
    long = "x" * 5000 + " so 9"
    assert math_answers.answer_region(long) == long[-math_answers.TAIL_CHARS:]


@pytest.mark.parametrize(("reference", "completion"), [
    (GSM8K["answer"], "48 + 24 = 72\n#### 72"),
    (GSM8K["answer"], "So the total is \\boxed{72}."),
    (GSM8K["answer"], "The answer is 72.0"),
    (GSM8K["answer"], "First 48, then 24, for 72"),  # the last number
    ("18", "#### 18\nI checked it twice, 3 times."),  # the marker wins over a later number
    ("18", "\\boxed{18}, not 5"),  # the box wins over a later number
    ("1,000", "There are 1000 of them."),
    ("1000", "There are 1,000 of them."),
    ("-3", "the answer is -3"),
    ("1/2", "0.5"),
    ("0.5", "$\\frac{1}{2}$"),
    ("\\frac{3}{4}", "0.75"),
    ("2\\sqrt{2}", "$\\sqrt{8}$"),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}"),
    ("$x^2+1$", "\\boxed{1+x^2}"),
    ("2^{10}", "\\boxed{1024}"),
    ("\\$18.90", "\\boxed{18.9}"),  # an escaped dollar is no delimiter
    ("$\\frac{1}{2}$", "0.5"),  # a delimited reference
    ("Since $x = 3$, $y = \\boxed{\\frac{1}{2}}$.", "y = 0.5"),  # a MATH solution
])  # fmt: skip
def test_equal_answers_score_one(reference, completion):
    assert math_answer(completion, {"answer": reference}) == 1.0


@pytest.mark.parametrize(("reference", "completion"), [
    (GSM8K["answer"], "#### 71"),
    (GSM8K["answer"], "\\boxed{72} is wrong, it is \\boxed{73}"),
    ("18", "#### 17\nnot 18"),
    ("1/2", "0.51"),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{6}}"),
    ("$x^2+1$", "\\boxed{x^2-1}"),
    ("18", "I do not know."),  # no answer at all
    ("18", ""),
])  # fmt: skip
def test_different_or_missing_answers_score_zero(reference, completion):
    assert math_answer(completion, {"answer": reference}) == 0.0


def test_an_answer_too_large_to_compare_scores_zero_without_being_computed():
    # Each would hold the GIL for minutes in big-integer arithmetic, where no deadline can end it.
    for tower in ["\\boxed{9^{9^{9^{9}}}}", "$10^{10^{10}}$", "\\boxed{(10^{10})!}", "9**9**9**9"]:
        assert math_answer(tower, {"answer": "18"}) == 0.0, tower
    assert math_answer("\\boxed{2^{1000}}", {"answer": "2^{1000}"}) == 1.0  # 302 digits: compared
    with pytest.raises(math_answers.AnswerTooLarge):
        math_answer("18", {"answer": "10^{10^{10}}"})


def test_the_field_kwarg_names_the_reference_and_a_missing_or_empty_one_raises():
    assert math_answer("\\boxed{6}", {"solution": "#### 6"}, field="solution") == 1.0
    with pytest.raises(KeyError, match="'answer'"):
        math_answer("6", {"solution": "6"})
    with pytest.raises(ValueError, match="not a number or a math expression"):
        math_answer("6", {"answer": "   "})


def test_the_registry_offers_it_as_a_built_in_run_under_the_graders_deadline():
    registry = load_registry()
    assert registry["math_answer"] is math_answer
    # Not an inline built-in: SymPy may be slow, so the graders call it in a thread with a deadline.
    assert math_answer not in BUILTIN_FUNCTIONS
    spec = reward_spec_adapter.validate_python({"type": "multi", "name": "m", "graders": [
        {**GRADER, "kwargs": {"field": "solution"}},
        {"type": "length", "name": "short", "max_chars": 100}]})  # fmt: skip
    completions = ["#### 72", "\\boxed{72}", "the answer is 72.0", "71", "#### 72"]
    items = [{"solution": GSM8K["answer"]}] * 4 + [{"question": "no solution column"}]
    results = graders.evaluate_batch(spec, completions, items, registry)
    assert [r.per_grader["math"] for r in results] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert [r.errors for r in results[:4]] == [[]] * 4
    assert results[4].errors == ["math: reward function 'math_answer' raised KeyError: \"the prompt row has no "
                                 "'solution' field\""]


@pytest.mark.trains
def test_a_grpo_run_rewarded_by_math_answer_on_gsm8k_rows_reports_finite_rewards():
    rows = [{"prompt": f"Q: {a} + {b} = ? A:", "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"}
            for a, b in [(1, 2), (3, 4), (5, 1), (2, 2)]]
    hp = {"max_steps": 2, "learning_rate": 1e-2, "rollout_batch_size": 2, "num_generations": 4, "batch_size": 8,
          "max_new_tokens": 6, "max_prompt_length": 24, "max_length": 64}  # fmt: skip
    job = GRPOJob(base_model="builtin:tiny-llama", seed=0, reward=GRADER, hyperparameters=hp)
    callbacks = RecordingCallbacks()
    result = trainers.run(job, TrainingData(train=rows), callbacks)
    assert (result.status, result.step) == ("completed", 2)
    for step in (1, 2):
        metrics = callbacks.metrics[step]
        for key in ("reward/mean", "reward/std", "reward/math", "frac_reward_zero_std", "train/loss"):
            assert math.isfinite(metrics[key]), (step, key, metrics)
        assert 0.0 <= metrics["reward/math"] <= 1.0
        assert metrics["reward/error_fraction"] == 0.0
