"""Grading completions by hand: each string_check operation, templates, length and format rules,
multi combinations, weights, model scores, reward functions found through the registry, and the
bounds on a grader's time (linear-time regular expressions, a deadline on every call)."""

import math
import sys
import threading
import time

import pytest

from trainers.spec import deadlines, graders, reward_functions
from trainers.spec.graders import GradeResult, evaluate, evaluate_batch, render
from trainers.spec.reward_functions import (
    RewardRegistryError,
    contains_answer,
    exact_match,
    load_registry,
    reward_function,
)
from trainers.spec.rewards import ModelReward, reward_spec_adapter
from trainers.spec.score_rules import length_score, normalize_model_score

ITEM = {"prompt": "2+2?", "answer": "4", "meta": {"lang": "en", "tags": ["math", "easy"]}, "n": 4, "none": None}


# Reward functions of this test module, registered through load_registry(modules=[__name__]).
@reward_function("test.word_count")
def word_count(completion, item, *, per_word=1.0):
    return per_word * len(completion.split())


@reward_function("test.raises")
def raises(completion, item):
    raise RuntimeError("scorer offline")


@reward_function("test.not_a_number")
def not_a_number(completion, item):
    return "0.5"


@reward_function("test.nan")
def nan(completion, item):
    return math.nan


REGISTRY = load_registry([__name__])


def spec(data):
    return reward_spec_adapter.validate_python(data)


def run(data, completion, item=ITEM, **kwargs):
    return evaluate(spec(data), completion=completion, item=item, registry=REGISTRY, **kwargs)


def check(operation, reference, completion, input="{{sample.output_text}}"):
    data = {"type": "string_check", "name": "c", "operation": operation, "input": input, "reference": reference}
    result = run(data, completion)
    assert result.errors == []
    return result.reward


# --- string_check -----------------------------------------------------------------------------------


def test_eq_and_ne_are_exact():
    assert check("eq", "{{item.answer}}", "4") == 1.0
    assert check("eq", "{{item.answer}}", "4 ") == 0.0
    assert check("eq", "Paris", "paris") == 0.0
    assert check("ne", "{{item.answer}}", "5") == 1.0
    assert check("ne", "{{item.answer}}", "4") == 0.0


def test_like_and_contains_are_case_sensitive_containment():
    for op in ("like", "contains"):
        assert check(op, "{{item.answer}}", "the answer is 4.") == 1.0
        assert check(op, "Paris", "it is paris") == 0.0


def test_ilike_and_icontains_ignore_case():
    for op in ("ilike", "icontains"):
        assert check(op, "PARIS", "it is paris") == 1.0
        assert check(op, "Straße", "STRASSE it is") == 1.0  # casefold, not lower
        assert check(op, "London", "it is paris") == 0.0


def test_regex_searches_the_input():
    assert check("regex", r"\b4\b", "so: 4 apples") == 1.0
    assert check("regex", r"^\d+$", "so: 4 apples") == 0.0
    assert check("regex", r"(?i)^paris", "PARIS!") == 1.0


def test_regex_from_the_row_is_compiled_per_row():
    data = {"type": "string_check", "name": "r", "operation": "regex", "reference": "{{item.pattern}}"}
    assert run(data, "abc123", item={"pattern": r"\d{3}"}).reward == 1.0
    bad = run(data, "abc123", item={"pattern": "(["})
    assert bad.reward == 0.0 and bad.per_grader == {"r": 0.0}
    assert bad.errors[0].startswith("r: ") and "regular expression" in bad.errors[0]


def test_templates_of_nested_fields_lists_and_non_strings():
    assert check("eq", "en", "", input="{{item.meta.lang}}") == 1.0
    assert check("eq", "easy", "", input="{{item.meta.tags.1}}") == 1.0
    assert check("eq", "4 and 4", "4", input="{{item.n}} and {{sample.output_text}}") == 1.0
    assert check("eq", '["math", "easy"]', "", input="{{item.meta.tags}}") == 1.0
    assert render("{{ item.meta.lang }}-{{sample.output_text}}", completion="x", item=ITEM) == "en-x"


@pytest.mark.parametrize("reference", ["{{item.solution}}", "{{item.meta.country}}", "{{item.meta.tags.5}}",
                                       "{{item.answer.x}}", "{{item.none}}"])
def test_a_missing_field_is_a_grader_error_scoring_zero(reference):
    data = {"type": "string_check", "name": "c", "operation": "ne", "reference": reference}
    result = run(data, "anything")
    assert result == GradeResult(reward=0.0, per_grader={"c": 0.0}, errors=result.errors)
    assert len(result.errors) == 1 and result.errors[0].startswith("c: " + reference)


# --- length and format --------------------------------------------------------------------------------


def test_length_score_shape():
    assert length_score(5, 10, 20) == 0.5  # n / min below the range
    assert length_score(0, 10, 20) == 0.0
    assert length_score(10, 10, 20) == length_score(20, 10, 20) == 1.0
    assert length_score(30, 10, 20) == 0.5  # 2 − n / max above it
    assert length_score(40, 10, 20) == length_score(400, 10, 20) == 0.0
    assert length_score(3, None, 20) == 1.0 and length_score(10**6, 10, None) == 1.0


def test_length_grader_by_range_and_by_target():
    assert run({"type": "length", "name": "l", "max_chars": 4}, "abcdef").reward == 0.5
    assert run({"type": "length", "name": "l", "min_chars": 4}, "ab").reward == 0.5
    target = {"type": "length", "name": "t", "target_chars": 10}
    assert run(target, "x" * 10).reward == 1.0
    assert run(target, "x" * 7).reward == pytest.approx(0.7)
    assert run(target, "x" * 13).reward == pytest.approx(0.7)
    assert run(target, "x" * 25).reward == 0.0


def test_format_matches_the_whole_completion_across_lines():
    data = {"type": "format", "name": "f", "pattern": r"<think>.*</think>\s*<answer>\d+</answer>"}
    assert run(data, "<think>a\nb</think>\n<answer>4</answer>").reward == 1.0
    assert run(data, "<think>a</think><answer>4</answer> trailing").reward == 0.0
    assert run(data, "<answer>4</answer>").reward == 0.0


# --- functions through the registry ---------------------------------------------------------------------


def test_registry_holds_the_built_ins_and_this_module_s_functions():
    assert REGISTRY["exact_match"] is exact_match and REGISTRY["contains_answer"] is contains_answer
    assert REGISTRY["test.word_count"] is word_count
    assert "test.word_count" not in load_registry()


def test_function_graders_call_the_registered_function_with_kwargs():
    data = {"type": "function", "name": "words", "function": "test.word_count", "kwargs": {"per_word": 0.5}}
    assert run(data, "one two three").reward == 1.5
    exact = {"type": "function", "name": "e", "function": "exact_match"}
    assert run(exact, "  4\n").reward == 1.0
    assert run({**exact, "kwargs": {"field": "prompt"}}, "2+2?").reward == 1.0


@pytest.mark.parametrize(("function", "why"), [("test.raises", "RuntimeError: scorer offline"),
                                               ("test.not_a_number", "not a finite number"),
                                               ("test.nan", "not a finite number"),
                                               ("exact_match", "no 'answer' field")])
def test_a_failing_function_is_a_grader_error(function, why):
    result = run({"type": "function", "name": "f", "function": function}, "x", item={"prompt": "p"})
    assert result.reward == 0.0 and result.per_grader == {"f": 0.0}
    assert len(result.errors) == 1 and why in result.errors[0]


def test_an_unregistered_function_at_run_time_is_a_grader_error():
    result = evaluate(spec({"type": "function", "name": "f", "function": "test.word_count"}),
                      completion="a", item={}, registry={})
    assert result.reward == 0.0 and "unknown reward function" in result.errors[0]


def test_built_in_functions():
    assert exact_match("The  Answer\n", {"answer": "the answer"}) == 1.0
    assert exact_match("the answer.", {"answer": "the answer"}) == 0.0
    assert exact_match("7", {"solution": 7}, field="solution") == 1.0
    assert contains_answer("So it is PARIS.", {"answer": "paris"}) == 1.0
    assert contains_answer("So it is PARIS.", {"answer": "paris"}, case_sensitive=True) == 0.0
    assert contains_answer("Rome", {"answer": "paris"}) == 0.0


def test_modules_and_entry_points_feed_the_registry(tmp_path, monkeypatch):
    (tmp_path / "site_rewards_a.py").write_text(
        "from trainers.spec.reward_functions import reward_function, exact_match\n"
        "@reward_function('site.one')\n"
        "def one(completion, item):\n    return 1.0\n"
    )

    class EntryPoint:
        name, value = "site.ep", "pkg:fn"

        def load(self):
            return lambda completion, item: 2.0

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(reward_functions, "entry_points", lambda group: [EntryPoint()])
    registry = load_registry(["site_rewards_a"])  # re-exporting a built-in is no conflict
    assert registry["site.one"]("", {}) == 1.0 and registry["site.ep"]("", {}) == 2.0


def test_registry_errors_are_configuration_errors(tmp_path, monkeypatch):
    (tmp_path / "site_rewards_b.py").write_text(
        "from trainers.spec.reward_functions import reward_function\n"
        "@reward_function('exact_match')\n"
        "def mine(completion, item):\n    return 1.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RewardRegistryError, match="already registered"):
        load_registry(["site_rewards_b"])
    with pytest.raises(RewardRegistryError, match="no_such_module_xyz"):
        load_registry(["no_such_module_xyz"])
    with pytest.raises(ValueError):
        reward_function("bad name")
    monkeypatch.delitem(sys.modules, "site_rewards_b")


# --- multi, weights, model scores ---------------------------------------------------------------------

THREE = [
    {"type": "string_check", "name": "right", "operation": "contains", "reference": "{{item.answer}}"},
    {"type": "length", "name": "short", "max_chars": 10},
    {"type": "format", "name": "digits", "pattern": r"\d+"},
]  # on "it is 4, yes!!" (14 chars): 1.0, 2 − 14/10 = 0.6, 0.0


@pytest.mark.parametrize(("calculate_output", "expected"), [("weighted_sum", 1.6), ("mean", 1.6 / 3),
                                                            ("min", 0.0), ("max", 1.0)])
def test_multi_combinations(calculate_output, expected):
    result = run({"type": "multi", "name": "m", "graders": THREE, "calculate_output": calculate_output},
                 "it is 4, yes!!")
    assert result.reward == pytest.approx(expected)
    assert result.per_grader == pytest.approx({"right": 1.0, "short": 0.6, "digits": 0.0})
    assert result.errors == []


def test_weights_scale_a_weighted_sum_and_a_lone_grader():
    weighted = [{**THREE[0], "weight": 2.0}, {**THREE[1], "weight": -0.5}, THREE[2]]
    result = run({"type": "multi", "name": "m", "graders": weighted}, "it is 4, yes!!")
    assert result.reward == pytest.approx(2.0 - 0.3)
    assert result.per_grader["right"] == 1.0  # scores are logged before weights
    assert run({**THREE[0], "weight": 0.25}, "4").reward == 0.25


def test_a_grader_error_in_a_multi_scores_zero_and_the_others_still_count():
    graders = [{**THREE[0], "reference": "{{item.missing}}"}, THREE[1]]
    result = run({"type": "multi", "name": "m", "graders": graders}, "short")
    assert result.reward == 1.0 and result.per_grader == {"right": 0.0, "short": 1.0}
    assert len(result.errors) == 1 and result.errors[0].startswith("right: ")


def test_model_scores_are_combined_with_their_weight():
    data = {"type": "multi", "name": "m", "graders": [
        {"type": "model", "name": "rm", "checkpoint_id": "ckpt_1", "weight": 0.5}, THREE[0]]}
    result = run(data, "4", model_scores={"ckpt_1": -1.2})
    assert result.reward == pytest.approx(0.5 * -1.2 + 1.0)
    assert result.per_grader == {"rm": -1.2, "right": 1.0}
    missing = run(data, "4")  # e.g. a dry run without the reward model
    assert missing.reward == 1.0 and "ckpt_1" in missing.errors[0]
    lone = run({"type": "model", "checkpoint_id": "ckpt_1", "weight": 2.0}, "4", model_scores={"ckpt_1": 0.75})
    assert lone == GradeResult(reward=1.5, per_grader={"model": 0.75}, errors=[])


def test_normalize_model_score():
    rm = ModelReward(checkpoint_id="c", clip=1.0)
    assert normalize_model_score(3.0, rm, mean=2.0, std=4.0) == 0.25
    assert normalize_model_score(20.0, rm, mean=2.0, std=4.0) == 1.0
    assert normalize_model_score(-20.0, rm, mean=2.0, std=4.0) == -1.0
    assert normalize_model_score(0.5, rm, mean=None, std=None) == 0.5  # no statistics recorded
    raw = ModelReward(checkpoint_id="c", normalize=False)
    assert normalize_model_score(20.0, raw, mean=2.0, std=4.0) == 20.0


# --- batches -----------------------------------------------------------------------------------------


def test_evaluate_batch_matches_evaluate_row_by_row():
    data = spec({"type": "multi", "name": "m", "graders": [
        {"type": "model", "name": "rm", "checkpoint_id": "c"}, THREE[0], THREE[1]]})
    completions = ["4", "it is five, not four", "4444444444444"]
    items = [ITEM, ITEM, {"answer": "4"}]
    results = evaluate_batch(data, completions, items, REGISTRY, {"c": [0.1, 0.2, 0.3]})
    assert results == [evaluate(data, completion=c, item=i, registry=REGISTRY, model_scores={"c": s})
                       for c, i, s in zip(completions, items, [0.1, 0.2, 0.3], strict=True)]
    with pytest.raises(ValueError):
        evaluate_batch(data, completions, items[:2], REGISTRY)
    with pytest.raises(ValueError):
        evaluate_batch(data, completions, items, REGISTRY, {"c": [0.1]})


# --- nothing a grader reads can hang it -----------------------------------------------------------------

CATASTROPHIC = r"(a+)+$"  # exponential time in a backtracking engine: each extra "a" doubles the work
REGEX = {"type": "string_check", "name": "r", "operation": "regex", "reference": CATASTROPHIC}


@pytest.mark.timeout(30)
def test_a_catastrophic_regex_is_graded_in_linear_time():
    assert run(REGEX, "a" * 30 + "!").reward == 0.0
    assert run(REGEX, "a" * 100_000).reward == 1.0
    assert run(REGEX, "a" * 99_999 + "!").reward == 0.0
    from_row = {**REGEX, "reference": "{{item.pattern}}"}
    assert run(from_row, "a" * 30 + "!", item={"pattern": CATASTROPHIC}).reward == 0.0
    assert run(from_row, "b" + "a" * 100_000, item={"pattern": CATASTROPHIC}).reward == 1.0


@pytest.mark.timeout(30)
def test_a_catastrophic_format_pattern_is_graded_in_linear_time():
    data = {"type": "format", "name": "f", "pattern": r"(a+)+"}
    assert run(data, "a" * 30 + "!").reward == 0.0
    assert run(data, "a" * 100_000).reward == 1.0


def test_regex_semantics_search_fullmatch_and_flags():
    assert check("regex", "a.b", "xx a\nb") == 0.0  # '.' stops at a newline unless (?s)
    assert check("regex", "(?s)a.b", "xx a\nb") == 1.0
    assert check("regex", "(?i)PARIS", "in paris") == 1.0
    assert check("regex", r"(?m)^b$", "a\nb\nc") == 1.0
    fmt = {"type": "format", "name": "f", "pattern": "a.b"}
    assert run(fmt, "a\nb").reward == 1.0  # format: the whole completion, '.' matching newlines
    assert run(fmt, "xa\nb").reward == 0.0
    assert run(fmt, "a\u00e9b").reward == 1.0  # one character, not two UTF-8 bytes


def test_a_row_pattern_the_engine_refuses_is_a_grader_error():
    data = {**REGEX, "reference": "{{item.pattern}}"}
    for pattern, why in [(r"(a)\1", "invalid escape sequence"), ("(?=a)", "invalid perl operator"),
                         ("x" * 2001, "at most 2000 characters")]:
        result = run(data, "aa", item={"pattern": pattern})
        assert result.reward == 0.0 and len(result.errors) == 1
        assert result.errors[0].startswith("r: ") and why in result.errors[0], result.errors[0]


def test_text_with_lone_surrogates_is_graded():
    assert check("regex", "b", "a\ud800b") == 1.0
    assert run({"type": "format", "name": "f", "pattern": "a.b"}, "a\ud800b").reward == 1.0


# A reward function that blocks until its test lets it go, so a timed-out call leaves no thread behind.
GATE = {"open": threading.Event(), "entered": threading.Event()}


@reward_function("test.blocks")
def blocks(completion, item):
    GATE["entered"].set()
    GATE["open"].wait(60)
    return 1.0


REGISTRY_WITH_BLOCKS = load_registry([__name__])
BLOCKS = {"type": "function", "name": "slow", "function": "test.blocks"}


def run_slow(data, completion, **kwargs):
    return evaluate(spec(data), completion=completion, item=ITEM, registry=REGISTRY_WITH_BLOCKS, **kwargs)


@pytest.fixture
def gate():
    GATE["open"], GATE["entered"] = threading.Event(), threading.Event()
    yield GATE
    GATE["open"].set()
    for _ in range(3000):  # the timed-out calls return once the gate opens (a slow match, once it ends)
        if deadlines.overdue_calls() == 0:
            break
        time.sleep(0.01)
    assert deadlines.overdue_calls() == 0


@pytest.mark.timeout(30)
def test_a_function_past_its_deadline_is_a_grader_error(gate, monkeypatch):
    monkeypatch.setattr(graders, "GRADER_TIMEOUT_S", 0.2)
    multi = {"type": "multi", "name": "m", "graders": [BLOCKS, THREE[1]]}
    result = run_slow(multi, "short")
    assert result.reward == 1.0 and result.per_grader == {"slow": 0.0, "short": 1.0}
    assert result.errors == ["slow: reward function 'test.blocks' did not return within 0.2 s"]


@pytest.mark.timeout(30)
def test_calls_still_running_past_their_deadline_are_bounded(gate):
    results = [run_slow(BLOCKS, "x", timeout=0.01) for _ in range(deadlines.MAX_OVERDUE_CALLS + 2)]
    assert all(r.reward == 0.0 for r in results)
    timed_out = [r for r in results if "did not return within" in r.errors[0]]
    refused = [r for r in results if "still running past their deadline" in r.errors[0]]
    assert len(timed_out) == deadlines.MAX_OVERDUE_CALLS and len(refused) == 2
    assert deadlines.overdue_calls() == deadlines.MAX_OVERDUE_CALLS


@pytest.mark.timeout(30)
def test_a_deadline_for_the_whole_evaluation_leaves_later_calls_unrun(gate):
    multi = {"type": "multi", "name": "m", "graders": [BLOCKS, {**BLOCKS, "name": "slow2"}, THREE[1]]}
    result = run_slow(multi, "short", timeout=30, deadline=time.monotonic() + 0.2)
    assert result.reward == 1.0 and result.per_grader == {"slow": 0.0, "slow2": 0.0, "short": 1.0}
    assert "did not return within 0.2 s" in result.errors[0]  # the time left, not its own 30 s
    assert result.errors[1] == "slow2: reward function 'test.blocks' was not run: the time allowed for grading ran out"


# Its DFA outgrows RE2's memory budget, so RE2 simulates the NFA: linear, but about a second per
# 50,000 characters on a 2-core machine.
HEAVY = r"(?:[a-f]|[h-m])[a-z]{0,999}[^a-z]"


def test_a_match_that_could_be_slow_runs_under_the_deadline_and_scores_alike(monkeypatch):
    monkeypatch.setattr(graders.patterns, "QUICK_WORK", 0)  # every match through the bounded path
    assert check("regex", r"\b4\b", "so: 4 apples") == 1.0
    assert check("regex", r"^\d+$", "so: 4 apples") == 0.0
    assert run({"type": "format", "name": "f", "pattern": "a.b"}, "a\nb").reward == 1.0


@pytest.mark.timeout(60)
def test_a_slow_linear_match_past_its_deadline_is_a_grader_error(gate):
    text = "".join("abcdefghijklmnopqrstuvwxyz"[i * 7 % 26] for i in range(50_000))
    result = run({**REGEX, "reference": HEAVY}, text, timeout=0.01)  # about 100 times too short
    assert result.reward == 0.0 and result.errors == ["r: the regular expression did not return within 0.01 s"]


def test_a_pattern_that_skipped_validation_is_a_grader_error():
    result = run({"type": "format", "name": "f", "pattern": r"(a)\1"}, "aa")
    assert result.reward == 0.0 and "invalid escape sequence" in result.errors[0]
