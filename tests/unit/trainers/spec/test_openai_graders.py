"""OpenAI grader objects translated into reward specs: each grader type, our own types unchanged, and
every refusal located at its field of the fine-tuning request."""

import pytest
from openai.types.graders import ScoreModelGrader, StringCheckGrader, TextSimilarityGrader

from trainers.spec.errors import UserError
from trainers.spec.graders import evaluate
from trainers.spec.openai_graders import GRADER_PARAM, request_param, translate
from trainers.spec.reward_functions import load_registry
from trainers.spec.rewards import ModelReward, MultiGrader
from trainers.spec.rewards import TextSimilarityGrader as OurTextSimilarity

REWARD_MODELS = {"ckpt_rm": "ckpt_rm", "my-reward-model": "ckpt_named"}
CHECK = {"type": "string_check", "name": "Exact answer", "input": "{{sample.output_text}}",
         "reference": "{{item.answer}}", "operation": "eq"}
SIMILAR = {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
           "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"}
SCORE = {"type": "score_model", "name": "rm", "model": "my-reward-model",
         "input": [{"role": "user", "content": "Rate {{sample.output_text}}"}]}


def translated(grader, **kwargs):
    return translate(grader, resolve_reward_model=REWARD_MODELS.get, **kwargs)


def refusal(grader, **kwargs) -> UserError:
    with pytest.raises(UserError) as info:
        translated(grader, **kwargs)
    assert info.value.message.startswith(f"{info.value.param}: ")
    return info.value


def test_string_check_carries_over_with_a_name_ours_allows():
    spec = translated(CHECK)
    assert spec.model_dump() == {"type": "string_check", "name": "Exact_answer", "operation": "eq",
                                 "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "weight": 1.0}
    assert evaluate(spec, completion="4", item={"answer": "4"}, registry={}).reward == 1.0


@pytest.mark.parametrize("operation", ["eq", "ne", "like", "ilike"])
def test_every_openai_string_check_operation_is_accepted(operation):
    assert translated({**CHECK, "operation": operation}).operation == operation


def test_text_similarity_carries_over():
    spec = translated({**SIMILAR, "pass_threshold": 0.5})
    assert isinstance(spec, OurTextSimilarity) and spec.evaluation_metric == "fuzzy_match"
    assert spec.pass_threshold == 0.5
    assert evaluate(spec, completion="abd", item={"answer": "abc"}, registry={}).reward == 1.0  # 2/3 ≥ 0.5


def test_objects_of_the_openai_sdk_are_accepted_as_dumped():
    check = StringCheckGrader(type="string_check", name="c", input="{{sample.output_text}}",
                              reference="{{item.answer}}", operation="ilike")
    similar = TextSimilarityGrader(type="text_similarity", name="s", input="{{sample.output_text}}",
                                   reference="{{item.answer}}", evaluation_metric="rouge_l")
    score = ScoreModelGrader(type="score_model", name="rm", model="ckpt_rm",
                             input=[{"role": "user", "content": "Rate {{sample.output_text}}"}])
    assert translated(check.model_dump()).operation == "ilike"
    assert translated(similar.model_dump()).evaluation_metric == "rouge_l"
    assert translated(score.model_dump()).checkpoint_id == "ckpt_rm"  # range and sampling_params dumped as null


def test_score_model_naming_a_reward_model_becomes_a_model_reward():
    spec = translated(SCORE)
    assert spec == ModelReward(type="model", name="rm", checkpoint_id="ckpt_named", normalize=True, clip=None)
    assert translated({**SCORE, "range": [0, 1]}).clip is None  # OpenAI's default: the judge's scale
    assert translated({**SCORE, "range": [-3, 3], "sampling_params": {"temperature": 0}}).clip == 3.0


def test_score_model_naming_no_reward_model_is_refused_as_an_llm_judge():
    error = refusal({**SCORE, "model": "gpt-4o-2024-08-06"})
    assert error.param == "method.reinforcement.grader.model"
    assert "'gpt-4o-2024-08-06'" in error.message and "LLM judge" in error.message
    assert "reward-model checkpoint" in error.message


@pytest.mark.parametrize(("range_", "why"), [
    ([0, 10], "bounded symmetrically"), ([1, 1], "low < high"), ([0], "two numbers"), ("0-1", "two numbers"),
])
def test_a_range_that_does_not_fit_is_refused_at_range(range_, why):
    error = refusal({**SCORE, "range": range_})
    assert error.param == "method.reinforcement.grader.range" and why in error.message


def test_an_unknown_score_model_field_is_located():
    assert refusal({**SCORE, "labels": ["a"]}).param == "method.reinforcement.grader.labels"


def test_python_is_refused_pointing_to_registered_reward_functions():
    error = refusal({"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0"})
    assert error.param == GRADER_PARAM
    for words in ("never run", '"type": "function"', "REWARD_FUNCTION_MODULES"):
        assert words in error.message


def test_label_model_is_refused_as_an_llm_judge():
    error = refusal({"type": "label_model", "name": "l", "model": "gpt-4o", "input": [], "labels": ["good", "bad"],
                     "passing_labels": ["good"]})
    assert error.param == "method.reinforcement.grader.type" and "LLM judge" in error.message


def test_multi_takes_its_keys_as_names_for_the_formula():
    spec = translated({"type": "multi", "name": "Total score", "calculate_output": "0.6 * correct + 0.4 * close",
                       "graders": {"correct": CHECK, "close": SIMILAR, "rm": SCORE}})
    assert isinstance(spec, MultiGrader) and spec.name == "Total_score"
    assert [g.name for g in spec.graders] == ["correct", "close", "rm"]
    assert spec.graders[2].checkpoint_id == "ckpt_named"
    result = evaluate(spec, completion="4", item={"answer": "4"}, registry={}, model_scores={"ckpt_named": 0.0})
    assert result.reward == pytest.approx(1.0) and result.errors == []


@pytest.mark.parametrize(("child", "param", "words"), [
    ({**CHECK, "operation": "equals"}, "method.reinforcement.grader.graders.fmt.operation", ["'eq'"]),
    ({"type": "python", "name": "p", "source": ""}, "method.reinforcement.grader.graders.fmt", ["never run"]),
    ({**SCORE, "model": "o3-mini"}, "method.reinforcement.grader.graders.fmt.model", ["LLM judge"]),
    ({**SCORE, "range": [0, 5]}, "method.reinforcement.grader.graders.fmt.range", ["symmetrically"]),
    ({**SIMILAR, "evaluation_metric": "cosine"}, "method.reinforcement.grader.graders.fmt.evaluation_metric",
     ["embedding model"]),
    ({**SIMILAR, "reference": "{{item.answer"}, "method.reinforcement.grader.graders.fmt.reference", ["never closed"]),
    ({"type": "multi", "graders": {}}, "method.reinforcement.grader.graders.fmt.type", ["cannot be multi"]),
    ({"type": "essay"}, "method.reinforcement.grader.graders.fmt.type", ["'essay' is no grader type"]),
    ("eq", "method.reinforcement.grader.graders.fmt", ["JSON object"]),
])
def test_a_refusal_inside_multi_is_located_by_its_key(child, param, words):
    error = refusal({"type": "multi", "name": "m", "calculate_output": "correct + fmt",
                     "graders": {"correct": CHECK, "fmt": child}})
    assert error.param == param, error.message
    for word in words:
        assert word in error.message


def test_a_formula_naming_no_key_is_refused_at_calculate_output():
    error = refusal({"type": "multi", "name": "m", "calculate_output": "correct + format",
                     "graders": {"correct": CHECK}})
    assert error.param == "method.reinforcement.grader.calculate_output" and "'format'" in error.message


def test_a_key_that_is_no_grader_name_is_refused_at_its_name():
    error = refusal({"type": "multi", "name": "m", "calculate_output": "mean", "graders": {"a b": CHECK}})
    assert error.param == "method.reinforcement.grader.graders.a b.name"


@pytest.mark.parametrize("grader", [
    {"type": "model", "checkpoint_id": "ckpt_1", "clip": 2.0},
    {"type": "length", "name": "short", "max_chars": 200},
    {"type": "format", "name": "tags", "pattern": "<answer>.*</answer>"},
    {"type": "function", "name": "exact", "function": "exact_match", "kwargs": {"field": "answer"}},
    {"type": "multi", "name": "m",  # calculate_output: 'weighted_sum' by default
     "graders": [{"type": "length", "name": "short", "max_chars": 200, "weight": 0.5},
                 {"type": "string_check", "name": "lang", "operation": "regex", "reference": "^en"}]},
])
def test_our_own_graders_are_accepted_unchanged(grader):
    spec = translated(grader, registry=load_registry())
    assert spec.model_dump(exclude_defaults=True) == {k: v for k, v in grader.items() if k != "type"} | (
        {"graders": [{k: v for k, v in g.items() if k != "type"} for g in grader["graders"]]}
        if "graders" in grader else {}
    )
    assert spec.type == grader["type"]


def test_with_the_registry_function_names_and_patterns_are_checked_at_their_key():
    registry = load_registry()
    error = refusal({"type": "multi", "name": "m", "calculate_output": "f",
                     "graders": {"f": {"type": "function", "function": "nope"}}}, registry=registry)
    assert error.param == "method.reinforcement.grader.graders.f.function"
    assert "unknown reward function" in error.message
    error = refusal({"type": "multi", "name": "m", "calculate_output": "f + g",
                     "graders": {"g": CHECK, "f": {"type": "format", "pattern": "(?=lookahead)"}}}, registry=registry)
    assert error.param == "method.reinforcement.grader.graders.f.pattern"
    # a list-form multi (ours) keeps its positions
    error = refusal({"type": "multi", "name": "m", "graders": [CHECK | {"name": "c"}, {"type": "function", "name": "f",
                     "function": "nope"}]}, registry=registry)
    assert error.param == "method.reinforcement.grader.graders[1].function"


@pytest.mark.parametrize(("grader", "param"), [
    ("string_check", GRADER_PARAM),
    ({"name": "x"}, "method.reinforcement.grader.type"),
    ({**CHECK, "operation": "equals"}, "method.reinforcement.grader.operation"),
    ({**CHECK, "extra": True}, "method.reinforcement.grader.extra"),
    ({**CHECK, "input": "{{sample.output_json.answer}}"}, "method.reinforcement.grader.input"),
    ({"type": "multi", "name": "m", "graders": "c"}, "method.reinforcement.grader.graders"),
    ({"type": "multi", "name": "m", "graders": {}}, "method.reinforcement.grader.graders"),
])
def test_top_level_refusals_are_located(grader, param):
    assert refusal(grader).param == param


def test_the_param_prefix_can_be_chosen():
    error = refusal({**CHECK, "operation": "equals"}, param="grader")
    assert error.param == "grader.operation"


def test_a_native_path_found_after_translation_is_located_in_the_request():
    multi = {"type": "multi", "name": "m", "calculate_output": "a + rm", "graders": {"a": CHECK, "rm": SCORE}}
    assert request_param("reward.graders[0].reference", multi) == "method.reinforcement.grader.graders.a.reference"
    assert request_param("reward.graders[1].checkpoint_id", multi) == "method.reinforcement.grader.graders.rm.model"
    assert request_param("reward.calculate_output", multi) == "method.reinforcement.grader.calculate_output"
    assert request_param("reward.checkpoint_id", SCORE) == "method.reinforcement.grader.model"
    assert request_param("reward.input", CHECK) == "method.reinforcement.grader.input"
    listed = {"type": "multi", "name": "m", "graders": [CHECK]}
    assert request_param("reward.graders[0].input", listed) == "method.reinforcement.grader.graders[0].input"
