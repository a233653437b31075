"""OpenAI's hyperparameters to the native ones and back: "auto" keeps the native default, and what a job
shows is the value it uses."""

import pytest

from api.errors import InvalidRequest
from api.schemas_fine_tuning import DpoHyperparameters, ReinforcementHyperparameters, SupervisedHyperparameters
from api.services.fine_tuning_methods import native_defaults, openai_param, to_native, to_openai


def test_auto_sets_nothing_and_reads_back_as_the_defaults():
    assert to_native("supervised", SupervisedHyperparameters(), "p") == {}
    assert to_native("dpo", None, "p") == {}
    defaults = native_defaults("sft")
    assert to_openai("sft", {}) == {"n_epochs": defaults.n_epochs, "batch_size": defaults.batch_size,
                                    "learning_rate_multiplier": 1.0}
    assert to_openai("dpo", {})["beta"] == native_defaults("dpo").beta


def test_the_learning_rate_multiplier_scales_each_algorithms_default_and_reads_back_as_written():
    for method, job_type in (("supervised", "sft"), ("dpo", "dpo")):
        given = SupervisedHyperparameters(learning_rate_multiplier=0.1, n_epochs=3, batch_size=2)
        native = to_native(method, given, "p")
        assert native == {"learning_rate": 0.1 * native_defaults(job_type).learning_rate, "n_epochs": 3,
                          "batch_size": 2}
        assert to_openai(job_type, native) == {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 0.1} | (
            {"beta": 0.1} if job_type == "dpo" else {})


@pytest.mark.parametrize(("multiplier", "generations", "echoed"), [
    (1, 8, 1.0), (0.5, 4, 0.5), (2, 16, 2.0), (0.1, 2, 0.25), (1.3, 10, 1.25)])
def test_compute_multiplier_scales_the_completions_per_prompt(multiplier, generations, echoed):
    given = ReinforcementHyperparameters(compute_multiplier=multiplier, batch_size=3)
    native = to_native("reinforcement", given, "p")
    # One optimizer step per rollout: every completion of the rollout in one batch.
    assert native == {"rollout_batch_size": 3, "num_generations": generations, "batch_size": 3 * generations}
    shown = to_openai("grpo", native)
    assert (shown["compute_multiplier"], shown["batch_size"], shown["eval_samples"]) == (echoed, 3, 1)


def test_eval_interval_is_eval_every_and_auto_is_the_checkpoint_cadence():
    assert to_native("reinforcement", ReinforcementHyperparameters(eval_interval=5), "p")["eval_every"] == 5
    assert to_openai("grpo", {"eval_every": 5})["eval_interval"] == 5
    assert to_openai("grpo", {"checkpoint_every": 7})["eval_interval"] == 7


@pytest.mark.parametrize(("given", "param"), [
    ({"eval_samples": 2}, "m.eval_samples"), ({"reasoning_effort": "low"}, "m.reasoning_effort")])
def test_what_cannot_be_honoured_is_refused(given, param):
    with pytest.raises(InvalidRequest) as err:
        to_native("reinforcement", ReinforcementHyperparameters(**given), "m")
    assert err.value.param == param
    assert to_native("reinforcement", ReinforcementHyperparameters(eval_samples=1, reasoning_effort="default"),
                     "m")["num_generations"] == 8


def test_native_paths_are_reported_by_openais_names():
    assert openai_param("hyperparameters.learning_rate", "method.dpo.hyperparameters") == \
        "method.dpo.hyperparameters.learning_rate_multiplier"
    assert openai_param("hyperparameters.num_generations", "x") == "x.compute_multiplier"
    assert openai_param("hyperparameters.rollout_batch_size", "x") == "x.batch_size"
    assert openai_param("hyperparameters.max_length", "x") == "x.max_length"


def test_values_are_auto_or_numbers_within_bounds():
    assert DpoHyperparameters(beta=None).beta == "auto"
    assert SupervisedHyperparameters(learning_rate_multiplier=2).learning_rate_multiplier == 2.0
    for bad in ({"n_epochs": True}, {"n_epochs": "3"}, {"batch_size": 0}, {"learning_rate_multiplier": 0}):
        with pytest.raises(ValueError):
            SupervisedHyperparameters(**bad)
