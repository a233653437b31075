"""OpenAI's fine-tuning methods and hyperparameters, to and from the native job types' hyperparameters.

Methods: `supervised` → `sft`, `dpo` → `dpo`, `reinforcement` → `grpo` (its grader translated into the
job's reward). A hyperparameter left "auto" keeps the native default of the job type; the job object
echoes every value as the native hyperparameters say, read back through the same table, so jobs
created natively (`job_…`) show the same way:

| OpenAI                     | native                                              | "auto"                    |
|----------------------------|-----------------------------------------------------|---------------------------|
| n_epochs                   | n_epochs                                            | the native default        |
| batch_size (sup., dpo)     | batch_size                                          | the native default        |
| batch_size (reinforcement) | rollout_batch_size (prompts per rollout)            | the native default (8)    |
| learning_rate_multiplier   | learning_rate = multiplier × the type's default     | 1                         |
| beta (dpo)                 | beta                                                | the native default (0.1)  |
| compute_multiplier         | num_generations = max(2, round(8 × multiplier))     | 1 (8 completions/prompt)  |
| eval_interval              | eval_every                                          | checkpoint_every          |
| eval_samples               | - (one completion per validation prompt)           | 1; other values refused   |
| reasoning_effort           | -                                                   | "default"; others refused |

A reinforcement job takes one optimizer step per rollout (on-policy, GRPO's default): its native
batch_size is rollout_batch_size × num_generations.
"""

from typing import Any

from pydantic import BaseModel

from api.errors import InvalidRequest
from trainers.spec.config import JOB_MODELS_BY_TYPE

TYPE_OF_METHOD = {"supervised": "sft", "dpo": "dpo", "reinforcement": "grpo"}
METHOD_OF_TYPE = {job_type: method for method, job_type in TYPE_OF_METHOD.items()}
# GRPO's completions per prompt at compute_multiplier 1 (TRL's default, and ours).
BASE_GENERATIONS = 8
# Native hyperparameter -> the OpenAI name a refusal of it is reported under.
OPENAI_NAME = {"n_epochs": "n_epochs", "batch_size": "batch_size", "rollout_batch_size": "batch_size",
               "num_generations": "compute_multiplier", "learning_rate": "learning_rate_multiplier",
               "beta": "beta", "eval_every": "eval_interval"}


def native_defaults(job_type: str) -> BaseModel:
    """The native hyperparameters of `job_type` with every default."""
    field = JOB_MODELS_BY_TYPE[job_type].model_fields["hyperparameters"]
    return field.default_factory()


def method_available(method: str) -> bool:
    """Whether this server has the job type `method` maps to."""
    return TYPE_OF_METHOD[method] in JOB_MODELS_BY_TYPE


def to_native(method: str, given: BaseModel | None, prefix: str) -> dict[str, Any]:
    """The native hyperparameters to set for OpenAI's `given` ones ("auto" sets nothing: the default stays).

    `prefix` is where the hyperparameters were given (`method.dpo.hyperparameters`), for refusals.
    """
    job_type = TYPE_OF_METHOD[method]
    defaults = native_defaults(job_type)
    values = {name: value for name, value in (given.model_dump() if given else {}).items()
              if value not in ("auto", None)}
    out: dict[str, Any] = {}
    if "n_epochs" in values:
        out["n_epochs"] = values["n_epochs"]
    if "learning_rate_multiplier" in values:
        out["learning_rate"] = values["learning_rate_multiplier"] * defaults.learning_rate
    if "beta" in values:
        out["beta"] = values["beta"]
    if "eval_interval" in values:
        out["eval_every"] = values["eval_interval"]
    if method != "reinforcement":
        if "batch_size" in values:
            out["batch_size"] = values["batch_size"]
        return out
    if values.get("eval_samples", 1) != 1:
        raise InvalidRequest(
            "eval_samples: only 1 is supported: each evaluation samples one completion per prompt of the "
            "validation file and reports its mean reward (eval/reward/mean)", param=f"{prefix}.eval_samples")
    if values.get("reasoning_effort", "default") != "default":
        raise InvalidRequest(
            f"reasoning_effort: only 'default' is supported (got {values['reasoning_effort']!r}): the models "
            "trained here have no reasoning-effort setting", param=f"{prefix}.reasoning_effort")
    generations = defaults.num_generations
    if "compute_multiplier" in values:
        generations = max(2, round(BASE_GENERATIONS * values["compute_multiplier"]))
    prompts = values.get("batch_size", defaults.rollout_batch_size)
    # One optimizer step per rollout (on-policy, as GRPO's default): every completion in one batch.
    out |= {"rollout_batch_size": prompts, "num_generations": generations, "batch_size": prompts * generations}
    return out


def _number(value: float) -> float:
    """A ratio as the user would have written it (0.1, not 0.10000000000000002)."""
    return float(f"{value:.12g}")


def to_openai(job_type: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's hyperparameters of a stored job of `job_type`, every value the concrete one used."""
    defaults = native_defaults(job_type)
    hp = defaults.model_copy(update=hyperparameters)
    out: dict[str, Any] = {"n_epochs": hp.n_epochs, "batch_size": hp.batch_size,
                           "learning_rate_multiplier": _number(hp.learning_rate / defaults.learning_rate)}
    if job_type == "dpo":
        out["beta"] = hp.beta
    if job_type == "grpo":
        out |= {"batch_size": hp.rollout_batch_size,
                "compute_multiplier": _number(hp.num_generations / BASE_GENERATIONS),
                "eval_interval": hp.eval_every or hp.checkpoint_every, "eval_samples": 1,
                "reasoning_effort": "default"}
    return out


def openai_param(native: str, prefix: str) -> str:
    """Where OpenAI's request names the native hyperparameter path `native` (`hyperparameters.beta`)."""
    head, _, rest = native.removeprefix("hyperparameters.").partition(".")
    return f"{prefix}.{OPENAI_NAME.get(head, head)}{'.' + rest if rest else ''}"
