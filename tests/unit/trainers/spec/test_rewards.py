"""Reward specs of PPO/GRPO jobs: what validates, where each error points, JSON round trips."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from trainers.spec.patterns import expansion
from trainers.spec.reward_functions import load_registry
from trainers.spec.reward_validation import error_path, validate_reward_spec
from trainers.spec.rewards import (
    REGISTRY_CONTEXT,
    FunctionGrader,
    MultiGrader,
    StringCheckGrader,
    model_checkpoints,
    reward_spec_adapter,
)
from trainers.spec.templates import TemplateRef, parse_template

ROOT = Path(__file__).resolve().parents[4]
REGISTRY = load_registry()

EXAMPLES = [
    {"type": "model", "checkpoint_id": "ckpt_1", "normalize": False, "clip": 5.0, "weight": 0.5},
    {"type": "string_check", "name": "answer", "operation": "icontains", "reference": "{{item.answer}}"},
    {"type": "length", "name": "short", "min_chars": 10, "max_chars": 200},
    {"type": "length", "name": "about_100", "target_chars": 100, "weight": -0.1},
    {"type": "format", "name": "tags", "pattern": r"<think>.*</think>\s*<answer>.*</answer>"},
    {"type": "function", "name": "exact", "function": "exact_match", "kwargs": {"field": "solution"}},
    {
        "type": "multi", "name": "total", "calculate_output": "weighted_sum",
        "graders": [
            {"type": "model", "name": "rm", "checkpoint_id": "ckpt_1", "weight": 0.3},
            {"type": "string_check", "name": "lang", "operation": "eq",
             "input": "{{item.meta.lang}}", "reference": "en"},
            {"type": "string_check", "name": "number", "operation": "regex", "reference": r"\d+"},
        ],
    },
]


def problems(data):
    return validate_reward_spec(data, registry=REGISTRY)


def fields(data):
    return [field for field, _ in problems(data)]


@pytest.mark.parametrize("data", EXAMPLES, ids=lambda d: d["type"])
def test_every_spec_type_round_trips_through_json(data):
    spec = reward_spec_adapter.validate_python(data)
    assert spec.type == data["type"]
    text = reward_spec_adapter.dump_json(spec)
    again = reward_spec_adapter.validate_json(text)
    assert again == spec
    assert reward_spec_adapter.dump_python(again, mode="json") == json.loads(text)
    assert problems(data) == []


def test_defaults_are_filled():
    spec = reward_spec_adapter.validate_python({"type": "model", "checkpoint_id": "c"})
    assert (spec.name, spec.normalize, spec.clip, spec.weight) == ("model", True, None, 1.0)
    check = reward_spec_adapter.validate_python({"type": "string_check", "name": "s", "operation": "eq",
                                                 "reference": "x"})
    assert check.input == "{{sample.output_text}}"
    multi = reward_spec_adapter.validate_python({"type": "multi", "name": "m", "graders": [EXAMPLES[1]]})
    assert multi.calculate_output == "weighted_sum"
    assert isinstance(multi.graders[0], StringCheckGrader)


def test_json_schema_builds_for_the_api_docs():
    schema = reward_spec_adapter.json_schema()
    assert "discriminator" in json.dumps(schema)


def test_model_checkpoints():
    assert model_checkpoints(reward_spec_adapter.validate_python(EXAMPLES[0])) == ["ckpt_1"]
    assert model_checkpoints(reward_spec_adapter.validate_python(EXAMPLES[1])) == []
    multi = reward_spec_adapter.validate_python({"type": "multi", "name": "m", "graders": [
        {"type": "model", "name": "a", "checkpoint_id": "ckpt_2"},
        EXAMPLES[2],
        {"type": "model", "name": "b", "checkpoint_id": "ckpt_1"},
    ]})
    assert model_checkpoints(multi) == ["ckpt_2", "ckpt_1"]


# --- templates --------------------------------------------------------------------------------------


def test_templates_parse_into_text_and_references():
    assert parse_template("Answer: {{ item.meta.lang }} / {{sample.output_text}}!") == (
        "Answer: ",
        TemplateRef("item", ("meta", "lang"), "{{ item.meta.lang }}"),
        " / ",
        TemplateRef("sample", ("output_text",), "{{sample.output_text}}"),
        "!",
    )
    assert parse_template("{{item.answers.0}}")[0].path == ("answers", "0")
    assert parse_template("plain } and { text") == ("plain } and { text",)


@pytest.mark.parametrize("text", ["{{sample.output}}", "{{items.answer}}", "{{item}}", "{{item.}}",
                                  "{{answer}}", "{{}}", "{{item.answer", "{{item.a b}}"])
def test_bad_templates_are_refused(text):
    with pytest.raises(ValueError):
        parse_template(text)


# --- each validation error names its field ------------------------------------------------------------


def grader(**fields):
    return {"type": "string_check", "name": "g", "operation": "eq", "reference": "x", **fields}


def in_multi(*graders, **fields):
    return {"type": "multi", "name": "m", "graders": list(graders), **fields}


def test_bad_literal_regex_names_the_reference():
    assert fields(grader(operation="regex", reference="(unclosed")) == ["reward.reference"]
    found = problems(in_multi(grader(), grader(name="r", operation="regex", reference="[a-")))
    assert [f for f, _ in found] == ["reward.graders[1].reference"]
    assert "regular expression" in found[0][1]


def test_a_templated_regex_is_left_for_run_time():
    assert problems(grader(operation="regex", reference="{{item.pattern}}")) == []


def test_a_literal_that_is_no_regex_is_fine_for_other_operations():
    assert problems(grader(operation="contains", reference="(")) == []


def test_bad_templates_name_their_field():
    assert fields(grader(reference="{{item.answer}} {{answer}}")) == ["reward.reference"]
    assert fields(in_multi(grader(), grader(name="h", input="{{sample.text}}"))) == ["reward.graders[1].input"]


def test_bad_format_pattern_names_the_pattern():
    assert fields(in_multi(grader(), {"type": "format", "name": "f", "pattern": "*x"})) == ["reward.graders[1].pattern"]


def test_unknown_function_names_the_function_and_lists_the_known_ones():
    found = problems(in_multi(grader(), {"type": "function", "name": "f", "function": "no_such"}))
    assert [f for f, _ in found] == ["reward.graders[1].function"]
    assert "exact_match" in found[0][1]


def test_kwargs_the_function_does_not_take_name_the_kwargs():
    assert fields({"type": "function", "name": "f", "function": "exact_match",
                   "kwargs": {"colum": "answer"}}) == ["reward.kwargs"]


def test_unknown_grader_type_names_the_type():
    assert fields({"type": "python", "name": "p"}) == ["reward.type"]
    assert fields(in_multi(grader(), {"type": "label_model", "name": "l"})) == ["reward.graders[1].type"]
    assert fields({"name": "no type"}) == ["reward.type"]


def test_multi_inside_multi_is_refused_at_its_type():
    inner = in_multi(grader())
    found = problems(in_multi(grader(), inner))
    assert [f for f, _ in found] == ["reward.graders[1].type"]
    assert "'multi'" in found[0][1]


def test_other_field_errors_keep_their_path():
    assert fields(in_multi(grader(), grader(name="h", operation="startswith"))) == ["reward.graders[1].operation"]
    assert fields(in_multi(grader(weight=float("nan")))) == ["reward.graders[0].weight"]
    assert fields(grader(extra=1)) == ["reward.extra"]
    assert fields({"type": "model", "checkpoint_id": "c", "clip": 0}) == ["reward.clip"]
    assert fields(grader(name="bad name")) == ["reward.name"]
    assert fields(in_multi()) == ["reward.graders"]


def test_length_rules():
    assert fields({"type": "length", "name": "l", "min_chars": 50, "max_chars": 10}) == ["reward.max_chars"]
    assert fields({"type": "length", "name": "l", "max_chars": 10, "target_chars": 5}) == ["reward.target_chars"]
    assert fields({"type": "length", "name": "l"}) == ["reward"]
    assert fields({"type": "length", "name": "l", "max_chars": 0}) == ["reward.max_chars"]


def test_multi_names_are_unique_and_checkpoints_appear_once():
    assert fields(in_multi(grader(), grader())) == ["reward.graders"]
    model = {"type": "model", "checkpoint_id": "c"}
    found = problems(in_multi(model, {**model, "name": "again"}))
    assert [f for f, _ in found] == ["reward.graders"]
    assert "checkpoint_id" in found[0][1]


def test_weights_only_with_weighted_sum():
    assert fields(in_multi(grader(weight=2.0), calculate_output="mean")) == ["reward.calculate_output"]
    assert problems(in_multi(grader(), grader(name="h"), calculate_output="min")) == []


def test_the_prefix_is_the_field_of_the_request():
    found = validate_reward_spec(grader(operation="regex", reference="("), registry=REGISTRY,
                                 prefix="hyperparameters.reward")
    assert [f for f, _ in found] == ["hyperparameters.reward.reference"]


def test_error_path_drops_union_tags_but_not_fields_named_like_them():
    assert error_path(("multi", "graders", 2, "function", "function")) == "reward.graders[2].function"
    assert error_path(("function", "function")) == "reward.function"
    assert error_path(("multi", "graders", 0), "union_tag_invalid") == "reward.graders[0].type"


# --- the registry check, on a parsed spec and in the model ------------------------------------------


def test_a_parsed_spec_is_checked_against_the_registry():
    spec = reward_spec_adapter.validate_python(in_multi(grader(), {"type": "function", "name": "f",
                                                                   "function": "mine"}))
    assert isinstance(spec.graders[1], FunctionGrader)  # without a registry the name cannot be checked
    assert [f for f, _ in validate_reward_spec(spec, registry=REGISTRY)] == ["reward.graders[1].function"]
    assert validate_reward_spec(spec, registry={**REGISTRY, "mine": lambda c, i: 1.0}) == []
    lone = reward_spec_adapter.validate_python({"type": "function", "name": "f", "function": "exact_match",
                                                "kwargs": {"x": 1}})
    assert [f for f, _ in validate_reward_spec(lone, registry=REGISTRY)] == ["reward.kwargs"]


def test_validation_context_checks_function_names_in_the_model():
    data = in_multi({"type": "function", "name": "f", "function": "mine"})
    with pytest.raises(ValidationError) as info:
        reward_spec_adapter.validate_python(data, context={REGISTRY_CONTEXT: REGISTRY})
    assert info.value.errors()[0]["loc"] == ("multi", "graders", 0, "function", "function")
    spec = reward_spec_adapter.validate_python(data, context={REGISTRY_CONTEXT: {"mine": lambda c, i: 0.0}})
    assert isinstance(spec, MultiGrader)


# --- the import boundary -----------------------------------------------------------------------------


REWARD_MODULES = ["trainers.spec.rewards", "trainers.spec.reward_validation", "trainers.spec.reward_functions",
                  "trainers.spec.graders"]  # fmt: skip


@pytest.mark.parametrize("module", REWARD_MODULES)
def test_reward_modules_import_neither_torch_nor_the_service_stack(module):
    # The API imports these to validate specs and dry-run graders.
    code = f"import sys, json\nimport {module}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    mods = set(json.loads(out.stdout.splitlines()[-1]))
    assert not {"torch", "transformers", "fastapi", "starlette", "sqlalchemy", "celery", "kombu"} & mods
    assert not {"api", "core", "worker"} & mods


# --- patterns the linear-time engine refuses, and templates parsed in linear time ---------------------


@pytest.mark.parametrize(("pattern", "why"), [(r"(a)\1", "invalid escape sequence: \\1"),
                                              (r"(?<=a)b", "invalid perl operator: (?<"),
                                              (r"a\Z", "invalid escape sequence: \\Z")])
def test_a_literal_regex_the_engine_refuses_names_its_field_with_the_engine_s_message(pattern, why):
    found = problems(grader(operation="regex", reference=pattern))
    assert [f for f, _ in found] == ["reward.reference"] and why in found[0][1], found
    found = problems(in_multi(grader(), {"type": "format", "name": "f", "pattern": pattern}))
    assert [f for f, _ in found] == ["reward.graders[1].pattern"] and why in found[0][1], found


def test_patterns_the_engine_takes():
    for pattern in [r"(?i)^paris\b", r"(?s)<think>.*</think>", r"\d{1,3}(?:,\d{3})*", r"(?P<n>x)\z", r"\p{Greek}+"]:
        assert problems(grader(operation="regex", reference=pattern)) == [], pattern
        assert problems({"type": "format", "name": "f", "pattern": pattern}) == [], pattern


@pytest.mark.timeout(30)
def test_templates_are_parsed_in_linear_time():
    with pytest.raises(ValueError, match="never closed"):
        parse_template("{{" * 100_000)
    with pytest.raises(ValueError, match="unknown template"):
        parse_template("{{" * 100_000 + "}}")
    assert parse_template("a{{item.x}}b{{ sample.output_text }}}") == (
        "a", TemplateRef("item", ("x",), "{{item.x}}"), "b",
        TemplateRef("sample", ("output_text",), "{{ sample.output_text }}"), "}")


@pytest.mark.parametrize("pattern", ["a{0,99}" * 31, r"(?:x{0,99}){0,40}", "(?s).{0,999}.{0,999}.{0,999}.{0,999}"])
def test_a_pattern_whose_repetitions_unroll_too_far_is_refused_before_compiling(pattern):
    # RE2 would take seconds to compile such a pattern, holding the GIL all along
    found = problems(grader(operation="regex", reference=pattern))
    assert [f for f, _ in found] == ["reward.reference"] and "unroll to more than 3000" in found[0][1], found


def test_pattern_expansion_counts_what_the_engine_unrolls():
    assert expansion("abc") == 3 and expansion(r"a{0,999}") == 999 and expansion(r"(?:ab{2}){10}") == 30
    assert expansion(r"(?i)x(?P<n>y){3}|z+") == 5 and expansion(r"(?:a{2}|b{3}){4}") == 20
    assert expansion(r"[]{]{3}\x{10FFFF}\p{Greek}{2}\pL\Q{9}\E") == 3 + 1 + 2 + 1 + 3
    assert expansion("a{,5}b{x}") == 9  # no counted repetition: each character is a literal
    think = r"(?s)<think>.{10,1000}</think>\s*<answer>.{1,200}</answer>"
    assert problems({"type": "format", "name": "f", "pattern": think}) == []


def test_the_model_checks_a_pattern_s_size_and_validate_reward_spec_compiles_it():
    # Compiling holds the GIL, so it is left out of the model, which servers validate on their event loop
    spec = reward_spec_adapter.validate_python(in_multi(grader(), {"type": "format", "name": "f", "pattern": "(?=a)"}))
    found = validate_reward_spec(spec, registry=REGISTRY)
    assert [f for f, _ in found] == ["reward.graders[1].pattern"] and "invalid perl operator" in found[0][1]
    with pytest.raises(ValidationError, match="unroll to more than"):
        reward_spec_adapter.validate_python({"type": "format", "name": "f", "pattern": "a{0,999}" * 4})
