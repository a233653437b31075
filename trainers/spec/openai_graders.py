"""OpenAI's grader objects translated into reward specs: the ``grader`` of a reinforcement fine-tuning job (torch-free).

`translate` takes the ``method.reinforcement.grader`` of an OpenAI fine-tuning request and returns the
`trainers.spec.rewards.RewardSpec` this server trains on:

- ``string_check`` and ``text_similarity`` are ours too and carry over as they are;
- ``score_model`` becomes a ``model`` reward when its ``model`` names a reward-model checkpoint (the
  caller resolves the name: it knows the project's checkpoints). Its ``input`` (the judge's prompt)
  and ``sampling_params`` have no use here, since a reward model scores the prompt and completion
  itself. ``range`` is the scale of a judge's answer, and a reward model's score is normalised to
  mean 0 and std 1 by default: a symmetric ``[-c, c]`` bounds the normalised score to it (our
  ``clip``); OpenAI's default ``[0, 1]``, or none, leaves it unbounded; any other range is refused;
- ``multi`` becomes our multi, its ``graders`` keys becoming the graders' names, which its
  ``calculate_output`` formula reads;
- ``python`` is refused: uploaded code is never run; reward functions installed on the server
  (``{"type": "function"}``) take its place;
- ``label_model``, and a ``score_model`` whose model is no reward model, are refused: they need an LLM
  judge, which this server does not run.

Our own graders (``model``, ``length``, ``format``, ``function``, and a multi whose ``graders`` is a
list) are accepted unchanged. Every refusal is a `UserError` whose ``param`` locates the field in the
request, e.g. ``method.reinforcement.grader.graders.fmt.operation``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from trainers.spec.errors import UserError
from trainers.spec.reward_functions import RewardFunction
from trainers.spec.reward_validation import error_path, validate_reward_spec
from trainers.spec.rewards import REGISTRY_CONTEXT, RewardSpec, reward_spec_adapter

GRADER_PARAM = "method.reinforcement.grader"
"""Where an OpenAI fine-tuning request holds its grader."""

OPENAI_TYPES = ("string_check", "text_similarity", "score_model", "multi", "python", "label_model")
OWN_TYPES = ("model", "length", "format", "function")
_SCORE_MODEL_FIELDS = frozenset({"type", "name", "model", "input", "range", "sampling_params"})
_SCORE_MODEL_RENAMES = {"checkpoint_id": "model", "clip": "range"}  # our field → the OpenAI field it came from
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def translate(
    grader: Any,
    *,
    resolve_reward_model: Callable[[str], str | None],
    registry: Mapping[str, RewardFunction] | None = None,
    param: str = GRADER_PARAM,
) -> RewardSpec:
    """The reward spec of an OpenAI grader object (or of one of ours, unchanged).

    Args:
        grader: the grader as sent (parsed JSON).
        resolve_reward_model: maps a ``score_model``'s ``model`` to the id of a reward-model checkpoint
            (a checkpoint id, or a fine-tuned reward model's name), or None when it names none.
        registry: the server's reward functions; when given, ``function`` graders and literal regular
            expressions are checked too (`trainers.spec.reward_validation.validate_reward_spec`).
        param: where the grader is in the request, the prefix of every error's ``param``.

    Returns:
        The validated spec.

    Raises:
        UserError: the grader cannot be trained on here; ``param`` is the field at fault, the message
            starts with it and says what to send instead.
    """
    if not isinstance(grader, Mapping):
        raise UserError(f"{param}: a grader is a JSON object, not {type(grader).__name__}", param=param)
    if grader.get("type") == "multi":
        data, located = _multi(grader, resolve_reward_model, param)
    else:
        data = _leaf(grader, resolve_reward_model, param, name=_name(grader))
        located = _Located(param, [], _SCORE_MODEL_RENAMES if grader.get("type") == "score_model" else {})
    context = {REGISTRY_CONTEXT: registry} if registry is not None else None
    try:
        spec = reward_spec_adapter.validate_python(data, context=context)
    except ValidationError as exc:
        error = exc.errors()[0]
        path = located.path(error_path(error["loc"], error["type"], prefix=param))
        raise UserError(f"{path}: {error['msg']}", param=path) from None
    if registry is not None and (problems := validate_reward_spec(spec, registry=registry, prefix=param)):
        path = located.path(problems[0][0])
        raise UserError(f"{path}: {problems[0][1]}", param=path)
    return spec


def request_param(path: str, grader: Any, *, prefix: str = "reward", param: str = GRADER_PARAM) -> str:
    """Where the request holds the field that a native field path names, for errors found after `translate`.

    The job-creation checks (the prompt rows against the templates, the reward-model checkpoints)
    report native paths such as ``reward.graders[1].reference``; in the request that grader may be
    ``method.reinforcement.grader.graders.<key>``.

    Args:
        path: a field path in the translated spec, starting with `prefix`.
        grader: the grader as sent, which `translate` accepted.
        prefix: the native path of the spec.
        param: where the grader is in the request.

    Returns:
        E.g. ``method.reinforcement.grader.graders.fmt.reference``, or ``method.reinforcement.grader.model``
        for ``reward.checkpoint_id`` when the grader is a score_model.
    """
    if not path.startswith(prefix):
        return path
    ours = param + path[len(prefix):]
    graders = grader.get("graders") if isinstance(grader, Mapping) else None
    if isinstance(grader, Mapping) and grader.get("type") == "multi" and isinstance(graders, Mapping | list):
        entries = graders.items() if isinstance(graders, Mapping) else enumerate(graders)
        children = [
            (f"{param}.graders.{key}" if isinstance(graders, Mapping) else f"{param}.graders[{key}]",
             _SCORE_MODEL_RENAMES if isinstance(child, Mapping) and child.get("type") == "score_model" else {})
            for key, child in entries
        ]
        return _Located(param, children, {}).path(ours)
    renames = _SCORE_MODEL_RENAMES if isinstance(grader, Mapping) and grader.get("type") == "score_model" else {}
    return _Located(param, [], renames).path(ours)


class _Located:
    """Turns the field path of an error in our spec into the path of the field in the request."""

    def __init__(self, param: str, children: list[tuple[str, Mapping[str, str]]], renames: Mapping[str, str]):
        self.param = param
        self.children = children  # per position in our graders list: (its path in the request, renames)
        self.renames = renames

    def path(self, ours: str) -> str:
        rest = ours[len(self.param):]
        if match := re.match(r"\.graders\[(\d+)\]", rest):
            i = int(match.group(1))
            if i < len(self.children):
                base, renames = self.children[i]
                return base + _renamed(rest[match.end():], renames)
        return self.param + _renamed(rest, self.renames)


def _renamed(rest: str, renames: Mapping[str, str]) -> str:
    """``.checkpoint_id…`` → ``.model…``: the first field of `rest` as the request named it."""
    match = re.match(r"\.([A-Za-z_]+)", rest)
    if match and match.group(1) in renames:
        return f".{renames[match.group(1)]}" + rest[match.end():]
    return rest


def _multi(grader: Mapping[str, Any], resolve: Callable[[str], str | None], param: str) -> tuple[dict, _Located]:
    """Our multi from OpenAI's (``graders`` a mapping by name) or ours (a list), and how to locate its errors."""
    graders = grader.get("graders")
    if isinstance(graders, Mapping):  # OpenAI's: the keys are the names the formula reads
        entries = [(f"{param}.graders.{key}", str(key), child) for key, child in graders.items()]
    elif isinstance(graders, list):  # ours: each grader names itself
        entries = [(f"{param}.graders[{i}]", None, child) for i, child in enumerate(graders)]
    else:
        return dict(grader), _Located(param, [], {})  # missing or of the wrong type: the spec's own error
    ours, children = [], []
    for path, key, child in entries:
        if not isinstance(child, Mapping):
            raise UserError(f"{path}: a grader is a JSON object, not {type(child).__name__}", param=path)
        if child.get("type") == "multi":
            raise UserError(f"{path}.type: a multi's graders cannot be multi graders", param=f"{path}.type")
        ours.append(_leaf(child, resolve, path, name=key if key is not None else child.get("name")))
        children.append((path, _SCORE_MODEL_RENAMES if child.get("type") == "score_model" else {}))
    data = {**grader, "graders": ours}
    if "name" in grader:
        data["name"] = _name(grader)
    return data, _Located(param, children, {})


def _leaf(grader: Mapping[str, Any], resolve: Callable[[str], str | None], path: str, *, name: Any) -> dict:
    """Our grader (not multi) for one OpenAI grader or one of ours."""
    kind = grader.get("type")
    named = {} if name is None else {"name": name}
    match kind:
        case "string_check" | "text_similarity" | "model" | "length" | "format" | "function":
            return {**grader, **named}
        case "score_model":
            return _score_model(grader, resolve, path) | named
        case "python":
            raise UserError(
                f"{path}: python graders are not supported: uploaded code is never run on this server. Use a "
                "reward function installed on the server instead, {\"type\": \"function\", \"name\": \"...\", "
                "\"function\": \"<registered name>\", \"kwargs\": {...}}: built-in ones (exact_match, "
                "contains_answer, math_answer...) or those the operator registers through "
                "REWARD_FUNCTION_MODULES or the rlhf_service.reward_functions entry points",
                param=path,
            )
        case "label_model":
            raise UserError(
                f"{path}.type: label_model graders need an LLM judge, which this server does not run: grade "
                "with a reward-model checkpoint (a score_model whose model names it, or {\"type\": \"model\"}), "
                "string_check, text_similarity or a registered reward function ({\"type\": \"function\"})",
                param=f"{path}.type",
            )
        case _:
            raise UserError(
                f"{path}.type: {kind!r} is no grader type; use one of {', '.join(OPENAI_TYPES)} (OpenAI's) or "
                f"{', '.join(OWN_TYPES)}",
                param=f"{path}.type",
            )


def _score_model(grader: Mapping[str, Any], resolve: Callable[[str], str | None], path: str) -> dict:
    """A ``model`` reward for a ``score_model`` whose ``model`` names a reward-model checkpoint."""
    for field in grader:
        if field not in _SCORE_MODEL_FIELDS:
            raise UserError(f"{path}.{field}: score_model graders have no field {field!r}", param=f"{path}.{field}")
    model = grader.get("model")
    if not isinstance(model, str) or not model:
        raise UserError(f"{path}.model: name a reward-model checkpoint (its id or name)", param=f"{path}.model")
    checkpoint_id = resolve(model)
    if checkpoint_id is None:
        raise UserError(
            f"{path}.model: {model!r} is no reward model of this project. A score_model grader here is scored "
            "by a reward-model checkpoint: name one (a checkpoint id such as 'ckpt_...' of a reward_model job, "
            "or a fine-tuned reward model's name). An LLM judge (a chat model prompted with input) is not "
            "supported",
            param=f"{path}.model",
        )
    return {"type": "model", "checkpoint_id": checkpoint_id, **_clip(grader.get("range"), f"{path}.range")}


def _clip(value: Any, path: str) -> dict:
    """Our ``clip`` for a score_model's ``range``: see the module's documentation."""
    numbers = isinstance(value, list) and len(value) == 2 and all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in value
    )
    if value is not None and not (numbers and value[0] < value[1]):
        raise UserError(f"{path}: two numbers [low, high] with low < high", param=path)
    if value is None or value == [0, 1]:
        return {}
    if value[0] == -value[1]:
        return {"clip": float(value[1])}
    raise UserError(
        f"{path}: a reward model's score is normalised to mean 0 and standard deviation 1, so it can only be "
        f"bounded symmetrically: send [-c, c] to clip it to ±c, or leave range out (or OpenAI's default [0, 1]) "
        f"for no bound; {value!r} cannot be kept",
        param=path,
    )


def _name(grader: Mapping[str, Any]) -> Any:
    """A grader's name as ours allows it (OpenAI's may hold spaces); its type when it has none."""
    name = grader.get("name")
    if name is None:
        return None if grader.get("type") == "model" else grader.get("type")
    if not isinstance(name, str):
        return name  # refused by the spec, at name
    return _NAME_CHARS.sub("_", name.strip())[:64] or grader.get("type")
