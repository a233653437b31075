"""The shared loop plumbing, with a loss on one weight of the tiny model: schedule, cadence, update
guard, stop and resume."""

import copy

import pytest
import torch

from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, tiny
from trainers.loop import AuxiliaryModel, TrainingLoop, build_optimizer, load_run_state, total_steps
from trainers.models.checkpoint import load_trainer_state
from trainers.spec.config import DPOJob, LoopHyperparameters
from trainers.spec.errors import NumericalError, UserError

NAMES = ("train/loss",)


def make_loop(callbacks, state=None, **hyperparameters):
    job = DPOJob(base_model="builtin:tiny-llama", hyperparameters={"learning_rate": 0.1} | hyperparameters)
    model, tokenizer = tiny()
    model = copy.deepcopy(model)
    loop = TrainingLoop(job, callbacks, model=model, tokenizer=tokenizer, state=state,
                        model_info=lambda: {"kind": "test", "adapter": False, "base_model": "none"},
                        num_rows=10, steps_per_epoch=5)  # fmt: skip
    return loop, model


def weight(model):
    return model.lm_head.weight[0, 0]  # the one weight the test losses depend on


def run_steps(loop, model, n):
    for _ in range(n):
        loop.next_step()
        loss = weight(model) ** 2
        loss.backward()
        loop.update(loss.detach().reshape(1), NAMES)


@pytest.mark.trains
def test_warmup_is_linear_then_constant():
    hp = LoopHyperparameters(learning_rate=1.0, warmup_steps=3)
    _, scheduler = build_optimizer([torch.nn.Parameter(torch.zeros(1))], hp)
    rates = []
    for _ in range(6):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_total_steps_come_from_max_steps_or_epochs():
    hp = LoopHyperparameters()
    assert total_steps(hp.model_copy(update={"n_epochs": 3}), 4) == 12
    assert total_steps(hp.model_copy(update={"n_epochs": 3, "max_steps": 5}), 4) == 5


def test_cadence_of_logs_evaluations_and_checkpoints():
    loop, _ = make_loop(RecordingCallbacks(), max_steps=10, log_every=3, eval_every=4, checkpoint_every=5)
    due = {}
    for step in range(1, 11):
        loop.step = step
        due[step] = (loop.log_due(), loop.eval_due(), loop.checkpoint_due())
    assert [s for s in due if due[s][0]] == [3, 5, 6, 9, 10]  # every 3, and at checkpoints
    assert [s for s in due if due[s][1]] == [4, 5, 8, 10]  # every 4, and at checkpoints
    assert [s for s in due if due[s][2]] == [5, 10]  # every 5, and at the end


def test_cadence_over_a_round_of_steps_counts_every_step_since_its_start():
    # Rounds of 3 steps (an RL rollout): a round is evaluated and saved once, at its end, when any of its steps is due.
    loop, _ = make_loop(RecordingCallbacks(), max_steps=10, eval_every=4, checkpoint_every=5)
    due = {}
    for first in (0, 3, 6, 9):
        loop.step = min(first + 3, 10)
        due[loop.step] = (loop.eval_due(since=first), loop.checkpoint_due(since=first))
    assert due == {3: (False, False), 6: (True, True), 9: (True, False), 10: (True, True)}
    loop.step = 6
    assert loop.checkpoint_due(since=5) is False and loop.checkpoint_due(since=4) is True
    assert loop.eval_due(since=6) is False  # no step since the round's start
    # Samples follow the logs: a round whose steps include a logged one (every 4, and at checkpoints).
    loop.hp = loop.hp.model_copy(update={"log_every": 4})
    logged = {}
    for first in (0, 3, 6, 9):
        loop.step = min(first + 3, 10)
        logged[loop.step] = loop.log_due(since=first)
    assert logged == {3: False, 6: True, 9: True, 10: True}


def test_log_reports_when_due_and_every_evaluated_step():
    callbacks = RecordingCallbacks()
    loop, _ = make_loop(callbacks, max_steps=10, log_every=3, checkpoint_every=5)
    for step in range(1, 8):
        loop.step = step
        loop.log({"train/loss": float(step)}, evaluated=step == 4)
    assert sorted(callbacks.metrics) == [3, 4, 5, 6]  # every 3, the checkpoint at 5, and the evaluated step 4
    assert callbacks.metrics[4] == {"train/loss": 4.0}


@pytest.mark.trains
def test_update_returns_metrics_and_steps_the_optimizer():
    callbacks = RecordingCallbacks()
    loop, model = make_loop(callbacks, max_steps=4, warmup_steps=1)
    assert callbacks.total_steps == [4]
    with torch.no_grad():
        model.lm_head.weight[0, 0] = 1.0
    loop.next_step()
    (weight(model) ** 2).backward()  # gradient 2, clipped to norm 1
    metrics = loop.update(torch.tensor([1.0]), NAMES)
    assert metrics == pytest.approx(
        {"train/loss": 1.0, "train/learning_rate": 0.05, "train/grad_norm": 2.0, "train/epoch": 0.2}
    )
    assert model.lm_head.weight.grad is None and weight(model).item() < 1.0


@pytest.mark.trains
@pytest.mark.parametrize("loss, grad, what", [(float("nan"), 1.0, "loss"), (1.0, float("inf"), "gradient norm")])
def test_update_refuses_non_finite_values_before_touching_the_weights(loss, grad, what):
    loop, model = make_loop(RecordingCallbacks(), max_steps=4)
    run_steps(loop, model, 2)
    before = model.lm_head.weight.detach().clone()
    loop.next_step()
    model.lm_head.weight.grad = torch.full_like(model.lm_head.weight, grad)
    with pytest.raises(NumericalError, match=f"non-finite {what} at step 3") as info:
        loop.update(torch.tensor([loss]), NAMES)
    assert info.value.step == 3 and torch.equal(model.lm_head.weight.detach(), before)


@pytest.mark.trains
def test_stop_saves_progress_once_and_resume_restores_the_state(tmp_path):
    callbacks = RecordingCallbacks(tmp_path)
    loop, model = make_loop(callbacks, max_steps=6, checkpoint_every=2, warmup_steps=3)
    run_steps(loop, model, 2)
    loop.checkpoint({"train/loss": 1.0})
    assert loop.stop({}).status == "stopped" and list(callbacks.checkpoints) == [2]  # nothing new to save
    run_steps(loop, model, 1)
    result = loop.stop({"train/loss": 0.5})
    assert (result.status, result.step) == ("stopped", 3) and list(callbacks.checkpoints) == [2, 3]
    assert callbacks.checkpoints[3][1]["model"]["kind"] == "test"

    state = load_trainer_state(callbacks.checkpoints[3][0])
    resumed_callbacks = RecordingCallbacks()
    resumed, _ = make_loop(resumed_callbacks, state=state, max_steps=6, checkpoint_every=2, warmup_steps=3)
    assert resumed.step == 3 and resumed_callbacks.total_steps == [6]
    assert resumed.scheduler.get_last_lr() == loop.scheduler.get_last_lr()
    lm_head = [p is model.lm_head.weight for p in loop.params].index(True)
    assert resumed.optimizer.state_dict()["state"][lm_head]["step"] == 3
    assert ("warning", "resuming with a job spec that differs from the checkpoint's") not in resumed_callbacks.events


@pytest.mark.trains
def test_resume_warns_about_a_different_spec_or_data_size(tmp_path):
    callbacks = RecordingCallbacks(tmp_path)
    loop, model = make_loop(callbacks, max_steps=6)
    run_steps(loop, model, 1)
    loop.checkpoint({})
    state = load_trainer_state(callbacks.checkpoints[1][0])
    state["data_position"]["num_rows"] = 99
    resumed_callbacks = RecordingCallbacks()
    make_loop(resumed_callbacks, state=state, max_steps=7)
    warnings = [m for level, m in resumed_callbacks.events if level == "warning"]
    assert len(warnings) == 2 and "job spec" in warnings[0] and "10 training rows" in warnings[1]


def make_loop_with_critic(callbacks, state=None, extra=None, **hyperparameters):
    critic = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.ones_(critic.weight)

    def save(directory, weights=None):
        directory.mkdir()
        torch.save(critic.state_dict(), directory / "weights.pt")

    job = DPOJob(base_model="builtin:tiny-llama", hyperparameters={"learning_rate": 0.1} | hyperparameters)
    model, tokenizer = tiny()
    model = copy.deepcopy(model)
    auxiliary = AuxiliaryModel(name="critic", model=critic, learning_rate=0.01, save=save)
    loop = TrainingLoop(job, callbacks, model=model, tokenizer=tokenizer, state=state, auxiliary=auxiliary,
                        extra_state=extra, model_info=lambda: {"kind": "test", "adapter": False, "base_model": "none"},
                        num_rows=10, steps_per_epoch=5)  # fmt: skip
    return loop, model, critic


def run_critic_steps(loop, model, critic, n, critic_grad=1.0):
    for _ in range(n):
        loop.next_step()
        loss = weight(model) ** 2 + critic_grad * critic.weight.sum()
        loss.backward()
        metrics = loop.update(loss.detach().reshape(1), NAMES)
    return metrics


@pytest.mark.trains
def test_an_auxiliary_model_has_its_own_rate_and_clipping_and_steps_with_the_model():
    loop, model, critic = make_loop_with_critic(RecordingCallbacks(), max_steps=4, max_grad_norm=1.0)
    metrics = run_critic_steps(loop, model, critic, 1, critic_grad=3.0)  # gradient (3, 3): norm 3√2
    assert metrics["critic/learning_rate"] == 0.01 and metrics["train/learning_rate"] == 0.1
    assert metrics["critic/grad_norm"] == pytest.approx(3 * 2**0.5)
    # AdamW's first step moves each weight by the rate, whatever the clipped gradient's scale
    assert critic.weight.detach()[0].tolist() == pytest.approx([0.99, 0.99])
    assert critic.weight.grad is None


@pytest.mark.trains
def test_a_non_finite_auxiliary_gradient_stops_both_models_before_they_move():
    loop, model, critic = make_loop_with_critic(RecordingCallbacks(), max_steps=4)
    run_critic_steps(loop, model, critic, 1)
    before = model.lm_head.weight.detach().clone(), critic.weight.detach().clone()
    loop.next_step()
    (weight(model) ** 2).backward()
    critic.weight.grad = torch.full_like(critic.weight, float("nan"))
    with pytest.raises(NumericalError, match="non-finite critic gradient norm at step 2") as info:
        loop.update(torch.tensor([1.0]), NAMES)
    assert info.value.step == 2
    assert torch.equal(model.lm_head.weight.detach(), before[0]) and torch.equal(critic.weight.detach(), before[1])


@pytest.mark.trains
def test_checkpoints_keep_the_auxiliary_model_and_extra_state_and_resume_restores_them(tmp_path):
    callbacks = RecordingCallbacks(tmp_path)
    extra = {"kl_coef": 0.3, "rows": torch.arange(3)}
    loop, model, critic = make_loop_with_critic(callbacks, extra=lambda: extra, max_steps=6, warmup_steps=3)
    run_critic_steps(loop, model, critic, 2)
    loop.checkpoint({})
    directory = callbacks.checkpoints[2][0]
    assert (directory / "critic" / "weights.pt").is_file() and (directory / "model").is_dir()

    state = load_run_state(directory)
    assert state["extra"]["kl_coef"] == 0.3 and torch.equal(state["extra"]["rows"], torch.arange(3))
    resumed, _, _ = make_loop_with_critic(RecordingCallbacks(), state=state, max_steps=6, warmup_steps=3)
    assert resumed.auxiliary_scheduler.get_last_lr() == loop.auxiliary_scheduler.get_last_lr() == [0.01 * 3 / 4]
    assert resumed.auxiliary_optimizer.state_dict()["state"][0]["step"] == 2
    torch.testing.assert_close(
        resumed.auxiliary_optimizer.state_dict()["state"][0]["exp_avg"],
        loop.auxiliary_optimizer.state_dict()["state"][0]["exp_avg"],
    )


@pytest.mark.trains
def test_resuming_with_an_auxiliary_model_needs_its_state(tmp_path):
    callbacks = RecordingCallbacks(tmp_path)
    loop, model = make_loop(callbacks, max_steps=6)
    run_steps(loop, model, 1)
    loop.checkpoint({})
    state = load_run_state(callbacks.checkpoints[1][0])
    with pytest.raises(UserError, match="holds no critic state"):
        make_loop_with_critic(RecordingCallbacks(), state=state, max_steps=6)
