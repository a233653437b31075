"""The ``reward`` of PPO and GRPO jobs: a reward model, graders in the OpenAI style, or both (torch-free).

A spec is one of ``model``, ``string_check``, ``text_similarity``, ``length``, ``format``,
``function``, or a ``multi`` that combines several of those (a multi holds no multi). Graders follow
OpenAI's grader objects where they overlap, so their specs carry over (`trainers.spec.openai_graders`
translates the rest): ``string_check`` and ``text_similarity`` take ``input`` and ``reference``
templates (`trainers.spec.templates`); string_check has OpenAI's operations (``like``/``ilike``
test containment, as there).

Scores: string_check and format give 1.0 or 0.0; text_similarity and length give [0, 1] (see
`trainers.spec.similarity`, `LengthGrader`); function graders return what the function returns; a
model reward is the reward model's score, normalised and clipped as asked. A lone grader's reward
is ``weight × score``; a multi combines its graders' scores with ``calculate_output``, a named
combination or an arithmetic formula over their names (`trainers.spec.formulas`).
`trainers.spec.graders` evaluates a spec.

Whatever can be checked without the server is checked here, each error located at its field. The
registered function names are server configuration: pass the registry as validation context
(``reward_spec_adapter.validate_python(data, context={REGISTRY_CONTEXT: registry})``) or call
`trainers.spec.reward_validation.validate_reward_spec`, which returns every problem as
``(field path, message)``. Regular expressions are RE2's (`trainers.spec.patterns`): the model
checks their size, and `validate_reward_spec` compiles them, since compiling holds the GIL and a
model is often validated on an event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trainers.spec.formulas import MAX_FORMULA_CHARS, check_formula, formula_names
from trainers.spec.patterns import MAX_PATTERN_CHARS, check_size
from trainers.spec.reward_functions import (
    FUNCTION_NAME_PATTERN,
    RewardFunction,
    kwargs_problem,
    unknown_function_problem,
)
from trainers.spec.similarity import UNSUPPORTED_METRICS, SimilarityMetric, unsupported_metric_problem
from trainers.spec.templates import is_literal, parse_template

REGISTRY_CONTEXT = "reward_registry"
"""Key of the validation context that holds the registry of reward functions."""


def _size_checked(pattern: str) -> str:
    # Only what is cheap: compiling with RE2 holds the GIL (up to ~0.1 s a pattern), and a model is
    # often validated on a server's event loop, so `validate_reward_spec` compiles, off it.
    check_size(pattern)  # PatternError, a ValueError: at the field
    return pattern


# --- graders ---------------------------------------------------------------------------------------

GraderName = Annotated[
    str,
    Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        description="Name of this grader, unique within the reward; its score is logged as reward/<name>.",
    ),
]
Weight = Annotated[
    float,
    Field(
        ge=-1000, le=1000, allow_inf_nan=False,
        description="Multiplier of this grader's score: a lone grader's reward is weight × score; in a "
                    "multi, 'weighted_sum' uses it (negative for a penalty) and the other combinations do not.",
    ),
]


class _Grader(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelReward(_Grader):
    """The score of a reward-model checkpoint, computed by the trainer at each completion's last token."""

    type: Literal["model"] = Field("model", description="A reward-model checkpoint.")
    name: GraderName = "model"
    checkpoint_id: str = Field(
        ..., min_length=1, max_length=128, examples=["ckpt_abc123"],
        description="Id of a checkpoint of a succeeded reward_model job.",
    )
    normalize: bool = Field(
        True,
        description="Use (score − mean) / std with the reward mean and std the reward-model job "
                    "recorded at that checkpoint, so rewards from different models are comparable.",
    )
    clip: float | None = Field(
        None, gt=0, le=1e6, description="Bound the (normalised) score to [−clip, clip]; null: no bound."
    )
    weight: Weight = 1.0


class StringCheckGrader(_Grader):
    """Compare two templated strings: 1.0 when the operation holds, else 0.0."""

    type: Literal["string_check"] = Field("string_check", description="A string comparison.")
    name: GraderName
    operation: Literal["eq", "ne", "like", "ilike", "contains", "icontains", "regex"] = Field(
        ...,
        description="'eq'/'ne': input equals / differs from reference (exactly, case included); "
                    "'like' or 'contains': reference occurs in input; 'ilike' or 'icontains': the same "
                    "ignoring case; 'regex': reference is a regular expression in RE2 syntax (no "
                    "backreferences or lookaround; linear time) found anywhere in input, as re.search; "
                    "use (?i), (?s) for flags.",
    )
    input: str = Field(
        "{{sample.output_text}}", max_length=10_000,
        description="Template of the text to check; by default the completion.",
    )
    reference: str = Field(
        ..., max_length=10_000, examples=["{{item.answer}}"],
        description="Template of the text to check against, e.g. {{item.answer}}.",
    )
    weight: Weight = 1.0

    @field_validator("input")
    @classmethod
    def _input_template(cls, value: str) -> str:
        parse_template(value)
        return value

    @field_validator("reference")
    @classmethod
    def _reference_template(cls, value: str, info: ValidationInfo) -> str:
        parts = parse_template(value)
        # A literal regex is checked now (compiled by `validate_reward_spec`); a templated one only
        # exists per row, so it is compiled at grading time and a bad one is that row's grader error.
        if info.data.get("operation") == "regex" and is_literal(parts):
            _size_checked(value)
        return value


class TextSimilarityGrader(_Grader):
    """How similar two templated texts are, in [0, 1], by a metric of OpenAI's (see `trainers.spec.similarity`)."""

    type: Literal["text_similarity"] = Field("text_similarity", description="A text similarity metric.")
    name: GraderName
    evaluation_metric: SimilarityMetric = Field(
        ...,
        description="'fuzzy_match': normalised character edit similarity (rapidfuzz's ratio); 'bleu': sentence "
                    "BLEU (sacrebleu) / 100; 'rouge_1' to 'rouge_5', 'rouge_l': ROUGE F-measure (rouge-score). "
                    "OpenAI's 'cosine', 'gleu' and 'meteor' are not offered.",
    )
    input: str = Field(
        "{{sample.output_text}}", max_length=10_000,
        description="Template of the text to grade; by default the completion.",
    )
    reference: str = Field(
        ..., max_length=10_000, examples=["{{item.answer}}"],
        description="Template of the text to compare with, e.g. {{item.answer}}.",
    )
    pass_threshold: float | None = Field(
        None, ge=0, le=1,
        description="When set, the score is 1.0 if the similarity is at least this, else 0.0; null: the similarity.",
    )
    weight: Weight = 1.0

    @field_validator("evaluation_metric", mode="before")
    @classmethod
    def _offered(cls, value: Any) -> Any:
        if isinstance(value, str) and value in UNSUPPORTED_METRICS:
            raise ValueError(unsupported_metric_problem(value))
        return value

    @field_validator("input", "reference")
    @classmethod
    def _template(cls, value: str) -> str:
        parse_template(value)
        return value


class LengthGrader(_Grader):
    """Score the completion's length in characters.

    1.0 when ``min_chars ≤ n ≤ max_chars``; below ``min_chars`` the score is ``n / min_chars``
    (0 for an empty completion); above ``max_chars`` it is ``max(0, 2 − n / max_chars)`` (0 from
    twice ``max_chars`` on). ``target_chars = t`` is ``min_chars = max_chars = t``: the score is
    ``max(0, 1 − |n − t| / t)``. For a hard limit use a ``format`` grader such as ``(?s).{0,200}``.
    """

    type: Literal["length"] = Field("length", description="A rule on the completion's length.")
    name: GraderName
    min_chars: int | None = Field(None, ge=0, le=10_000_000, description="Shortest length that scores 1.0.")
    max_chars: int | None = Field(None, ge=1, le=10_000_000, description="Longest length that scores 1.0.")
    target_chars: int | None = Field(
        None, ge=1, le=10_000_000, description="The length that scores 1.0; instead of min_chars/max_chars."
    )
    weight: Weight = 1.0

    @field_validator("max_chars")
    @classmethod
    def _max_not_below_min(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("min_chars")
        if value is not None and low is not None and value < low:
            raise ValueError(f"max_chars ({value}) must be at least min_chars ({low})")
        return value

    @field_validator("target_chars")
    @classmethod
    def _target_alone(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and (info.data.get("min_chars") is not None or info.data.get("max_chars") is not None):
            raise ValueError("target_chars replaces min_chars and max_chars: set either, not both")
        return value

    @model_validator(mode="after")
    def _some_bound(self) -> LengthGrader:
        if self.min_chars is None and self.max_chars is None and self.target_chars is None:
            raise ValueError("set target_chars, or min_chars and/or max_chars")
        return self


class FormatGrader(_Grader):
    """1.0 when the whole completion matches a regular expression (RE2; as re.fullmatch with DOTALL), else 0.0."""

    type: Literal["format"] = Field("format", description="A regular expression the completion must match.")
    name: GraderName
    pattern: str = Field(
        ..., min_length=1, max_length=MAX_PATTERN_CHARS, examples=[r"<think>.*</think>\s*<answer>.*</answer>"],
        description="Regular expression in RE2 syntax (no backreferences or lookaround; linear time) matched "
                    "against the whole completion; '.' matches newlines.",
    )
    weight: Weight = 1.0

    @field_validator("pattern")
    @classmethod
    def _not_too_large(cls, value: str) -> str:
        return _size_checked(value)


class FunctionGrader(_Grader):
    """A Python reward function installed on the server, called by its registered name."""

    type: Literal["function"] = Field("function", description="A reward function registered on the server.")
    name: GraderName
    function: str = Field(
        ..., pattern=FUNCTION_NAME_PATTERN, examples=["exact_match"],
        description="Registered name of the function (see the server's reward function list).",
    )
    kwargs: dict[str, JsonValue] = Field(
        default_factory=dict, validate_default=True, examples=[{"field": "answer"}],
        description="Keyword arguments passed to the function after the completion and the prompt row.",
    )
    weight: Weight = 1.0

    @field_validator("function")
    @classmethod
    def _registered(cls, value: str, info: ValidationInfo) -> str:
        registry = _context_registry(info)
        if registry is not None and value not in registry:
            raise ValueError(unknown_function_problem(value, registry))
        return value

    @field_validator("kwargs")
    @classmethod
    def _accepted(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        registry = _context_registry(info)
        function = info.data.get("function")
        if registry is not None and function in registry:
            problem = kwargs_problem(registry[function], function, value)
            if problem:
                raise ValueError(problem)
        return value


Grader = Annotated[
    ModelReward | StringCheckGrader | TextSimilarityGrader | LengthGrader | FormatGrader | FunctionGrader,
    Field(discriminator="type"),
]
"""One grader: anything a reward spec can be except a multi."""


COMBINATIONS = ("weighted_sum", "mean", "min", "max")
"""The named values of a multi's ``calculate_output``; any other value is a formula."""


def is_formula(calculate_output: str) -> bool:
    """Whether a multi's ``calculate_output`` is an arithmetic formula rather than a named combination."""
    return calculate_output not in COMBINATIONS


class MultiGrader(_Grader):
    """Several graders combined into one reward; each grader's score is also logged on its own."""

    type: Literal["multi"] = Field("multi", description="A combination of graders.")
    name: GraderName
    graders: list[Grader] = Field(
        ..., min_length=1, max_length=32,
        description="The graders to combine (not multi); names unique, each checkpoint at most once.",
    )
    calculate_output: str = Field(
        "weighted_sum", min_length=1, max_length=MAX_FORMULA_CHARS,
        examples=["weighted_sum", "0.7 * correct + 0.3 * min(1, fmt)"],
        description="'weighted_sum': Σ weight·score; 'mean', 'min', 'max' of the scores (weights unused); or an "
                    "arithmetic formula over the graders' names, as OpenAI's: numbers, + - * / ** (or ^, a "
                    "power), parentheses and min, max, abs, sqrt, log, exp, floor, ceil, clip(x, low, high) "
                    "(weights unused: write the factors in the formula).",
    )

    @field_validator("graders")
    @classmethod
    def _distinct(cls, graders: list[Any]) -> list[Any]:
        names: dict[str, int] = {}
        checkpoints: dict[str, int] = {}
        for i, grader in enumerate(graders):
            if grader.name in names:
                raise ValueError(f"graders[{i}].name {grader.name!r} repeats graders[{names[grader.name]}].name")
            names[grader.name] = i
            if isinstance(grader, ModelReward):
                # Model scores reach the graders keyed by checkpoint id: one setting per checkpoint.
                if grader.checkpoint_id in checkpoints:
                    raise ValueError(
                        f"graders[{i}].checkpoint_id {grader.checkpoint_id!r} repeats "
                        f"graders[{checkpoints[grader.checkpoint_id]}].checkpoint_id"
                    )
                checkpoints[grader.checkpoint_id] = i
        return graders

    @field_validator("calculate_output")
    @classmethod
    def _weights_used(cls, value: str, info: ValidationInfo) -> str:
        graders = info.data.get("graders")
        if is_formula(value) and graders is not None:  # FormulaError, a ValueError: at the field
            check_formula(value, [g.name for g in graders])
        elif is_formula(value):  # the graders are in error: the formula's own syntax can still be checked
            formula_names(value)
        graders = graders or []
        # Silently ignoring a weight the user set would train on a reward they did not ask for.
        weighted = [i for i, g in enumerate(graders) if g.weight != 1.0]
        if value != "weighted_sum" and weighted:
            fix = "write the factor in the formula" if is_formula(value) else "use 'weighted_sum'"
            raise ValueError(f"{value!r} ignores weights, but graders[{weighted[0]}] sets one: {fix}")
        return value


RewardSpec = Annotated[
    ModelReward | StringCheckGrader | TextSimilarityGrader | LengthGrader | FormatGrader | FunctionGrader | MultiGrader,
    Field(discriminator="type"),
]
"""The ``reward`` of a PPO or GRPO job."""

reward_spec_adapter: TypeAdapter[RewardSpec] = TypeAdapter(RewardSpec)


# --- what the service reads off a spec -------------------------------------------------------------


def leaf_graders(spec: RewardSpec) -> list[Grader]:
    """The graders a spec evaluates: a multi's graders, or the spec itself.

    Args:
        spec: a validated reward spec.

    Returns:
        The non-multi graders in order.
    """
    return list(spec.graders) if isinstance(spec, MultiGrader) else [spec]


def model_checkpoints(spec: RewardSpec) -> list[str]:
    """Checkpoint ids of the reward models a spec needs, so the service can check they exist.

    Args:
        spec: a validated reward spec.

    Returns:
        Each checkpoint id once, in the order the spec names them.
    """
    return list(dict.fromkeys(g.checkpoint_id for g in leaf_graders(spec) if isinstance(g, ModelReward)))


def _context_registry(info: ValidationInfo) -> Mapping[str, RewardFunction] | None:
    context = info.context
    return context.get(REGISTRY_CONTEXT) if isinstance(context, Mapping) else None
