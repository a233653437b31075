"""Precision and memory settings on CPU: bf16 and fp16 autocast with fp32 master weights, the fp16
loss scaler, frozen models in the compute type, checkpoints in the base model's type, gradient
checkpointing, the attention implementation, and what the run reports it resolved."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import trainers
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks, tiny
from trainers import DPOJob, GRPOJob, PPOJob, TrainingData, UserError
from trainers.__main__ import build_parser
from trainers.data.synthetic import uppercase_preference_rows
from trainers.loop import TrainingLoop, load_run_state
from trainers.models.checkpoint import MODEL_DIR, write_model_info
from trainers.models.reward import load_reward_model
from trainers.precision import ComputeSettings
from trainers.rl.rewards import RewardComputer
from trainers.run_setup import prepare_run
from trainers.spec.errors import NumericalError

ROWS = uppercase_preference_rows(64, seed=0)
PROMPTS = [{"prompt": p} for p in ["Hello", "Say something", "Write", "Go", "Tell me", "Once", "Why", "Hi there"]]
CONTAINS_E = {"type": "string_check", "name": "has_e", "operation": "contains", "reference": "e"}
GRPO_SMALL = {"learning_rate": 1e-2, "rollout_batch_size": 2, "num_generations": 4, "batch_size": 8,
              "max_new_tokens": 6, "max_prompt_length": 16, "max_length": 64}  # fmt: skip
PPO_SMALL = {"learning_rate": 1e-2, "critic_learning_rate": 3e-3, "rollout_batch_size": 8, "batch_size": 4,
             "ppo_epochs": 1, "max_new_tokens": 6, "max_prompt_length": 16, "max_length": 64}  # fmt: skip


@pytest.fixture(scope="module")
def bf16_base(tmp_path_factory):
    """builtin:tiny-llama saved in bf16, as most released checkpoints are."""
    model, tokenizer = tiny()
    directory = tmp_path_factory.mktemp("bf16-base")
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def dpo_job(base="builtin:tiny-llama", lora=None, **hp):
    hp = {"learning_rate": 1e-3, "max_steps": 6, "batch_size": 8} | hp
    return DPOJob(base_model=base, seed=0, lora=lora, hyperparameters=hp)


def losses(callbacks):
    return [callbacks.metrics[s]["train/loss"] for s in sorted(callbacks.metrics)]


def test_bf16_on_cpu_keeps_fp32_master_weights_a_bf16_reference_and_says_so(bf16_base):
    callbacks = RecordingCallbacks()
    job = dpo_job(bf16_base, precision="bf16", precompute_ref_logprobs=False)
    run = prepare_run(job, TrainingData(train=ROWS), callbacks, resume_from=None, reference="during_training")
    assert run.compute.precision == "bf16" and run.compute.checkpoint_dtype == torch.bfloat16
    assert {p.dtype for p in run.model.parameters()} == {torch.float32}  # master weights
    assert {p.dtype for p in run.reference.parameters()} == {torch.bfloat16}  # frozen: the compute type
    assert ("info", "precision bf16 (autocast, fp32 master weights), attention sdpa, gradient checkpointing off, "
                    "device cpu") in callbacks.events  # fmt: skip
    with run.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")


def test_auto_on_cpu_is_fp32_without_autocast_and_grpo_holds_its_reference_in_bf16_when_asked():
    callbacks = RecordingCallbacks()
    run = prepare_run(dpo_job(), TrainingData(train=ROWS), callbacks, resume_from=None)
    assert run.compute.precision == "fp32" and run.compute.checkpoint_dtype == torch.float32
    assert ("info", "precision fp32, attention sdpa, gradient checkpointing off, device cpu") in callbacks.events
    with run.autocast():
        assert not torch.is_autocast_enabled("cpu")
    hp = GRPO_SMALL | {"precision": "bf16"}
    job = GRPOJob(base_model="builtin:tiny-llama", reward=CONTAINS_E, hyperparameters=hp)
    run = prepare_run(job, TrainingData(train=PROMPTS), RecordingCallbacks(), resume_from=None,
                      reference="during_training")  # fmt: skip
    assert next(run.reference.parameters()).dtype == torch.bfloat16
    assert next(run.model.parameters()).dtype == torch.float32


def test_a_reward_model_scoring_rollouts_is_held_in_the_compute_type(tmp_path):
    model, tokenizer = load_reward_model("builtin:tiny-llama")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    write_model_info(tmp_path, {"kind": "reward_model", "adapter": False, "base_model": "builtin:tiny-llama"})
    job = GRPOJob(base_model="builtin:tiny-llama", reward={"type": "model", "name": "rm", "checkpoint_id": "c"},
                  reward_model_dirs={"c": str(tmp_path)}, hyperparameters=GRPO_SMALL)  # fmt: skip
    bf16 = ComputeSettings("bf16", None, False, torch.device("cpu"))
    rewarder = RewardComputer.from_job(job, policy_tokenizer=tiny()[1], device=torch.device("cpu"),
                                       on_event=lambda *_: None, compute=bf16)  # fmt: skip
    assert {p.dtype for p in rewarder.reward_models["c"].model.parameters()} == {torch.bfloat16}


@pytest.mark.trains
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_dpo_in_low_precision_learns_as_fp32_does_and_saves_in_the_base_type(bf16_base, tmp_path, precision):
    runs = {}
    for name in ("fp32", precision):
        callbacks = runs[name] = RecordingCallbacks(tmp_path / name)
        result = trainers.run(dpo_job(bf16_base, precision=name, precompute_ref_logprobs=False),
                              TrainingData(train=ROWS), callbacks)  # fmt: skip
        assert result.status == "completed"
    low = losses(runs[precision])
    assert all(math.isfinite(v) for m in runs[precision].metrics.values() for v in m.values())
    assert low[-1] < low[0] - 0.15  # it learns ...
    # ... as fp32 does: autocast's copies of the weights follow every update
    assert low == pytest.approx(losses(runs["fp32"]), abs=0.01)
    assert ("train/loss_scale" in runs[precision].metrics[6]) == (precision == "fp16")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / precision / "checkpoint-6" / MODEL_DIR)
    assert saved.dtype == torch.bfloat16  # the base's type, though the master weights were fp32


@pytest.mark.trains
def test_an_fp32_base_trained_in_bf16_is_saved_in_fp32(tmp_path):
    callbacks = RecordingCallbacks(tmp_path)
    trainers.run(dpo_job(precision="bf16", max_steps=2), TrainingData(train=ROWS), callbacks)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-2" / MODEL_DIR).dtype == torch.float32


@pytest.mark.trains
def test_grpo_in_bf16_runs_with_finite_metrics_and_learns_the_reward():
    callbacks = RecordingCallbacks()
    job = GRPOJob(base_model="builtin:tiny-llama", seed=0, reward=CONTAINS_E,
                  hyperparameters={"learning_rate": 1e-2, "max_steps": 10, "rollout_batch_size": 4,
                                   "num_generations": 8, "batch_size": 32, "max_new_tokens": 8,
                                   "max_prompt_length": 16, "max_length": 64, "precision": "bf16"})  # fmt: skip
    result = trainers.run(job, TrainingData(train=PROMPTS), callbacks)
    assert (result.status, result.step) == ("completed", 10)
    metrics = callbacks.metrics
    assert all(math.isfinite(v) for m in metrics.values() for v in m.values())
    before = sum(metrics[s]["reward/mean"] for s in (1, 2, 3)) / 3
    after = sum(metrics[s]["reward/mean"] for s in (8, 9, 10)) / 3
    assert after > before + 0.3, (before, after)


@pytest.mark.trains
def test_an_fp16_run_resumes_with_its_loss_scale_as_if_never_interrupted(tmp_path):
    job = dpo_job(precision="fp16", checkpoint_every=2, precompute_ref_logprobs=False)  # the same frozen reference
    straight = RecordingCallbacks()
    trainers.run(job, TrainingData(train=ROWS), straight)
    first = RecordingCallbacks(tmp_path, stop_after=2)
    assert trainers.run(job, TrainingData(train=ROWS), first).status == "stopped"
    saved = first.checkpoints[2][0]
    assert load_run_state(saved)["scaler"]["scale"] == straight.metrics[2]["train/loss_scale"]
    resumed = RecordingCallbacks()
    trainers.run(job, TrainingData(train=ROWS), resumed, resume_from=saved)
    for step in (3, 4, 5, 6):
        assert resumed.metrics[step] == pytest.approx(straight.metrics[step], rel=1e-6, abs=1e-7)


@pytest.mark.trains
def test_a_bf16_base_resumes_from_its_fp32_master_weights_as_if_never_interrupted(bf16_base, tmp_path):
    job = dpo_job(bf16_base, precision="bf16", checkpoint_every=2, precompute_ref_logprobs=False)
    straight = RecordingCallbacks()
    trainers.run(job, TrainingData(train=ROWS), straight)
    first = RecordingCallbacks(tmp_path, stop_after=2)
    assert trainers.run(job, TrainingData(train=ROWS), first).status == "stopped"
    saved = first.checkpoints[2][0]
    assert AutoModelForCausalLM.from_pretrained(saved / MODEL_DIR).dtype == torch.bfloat16  # downloads stay bf16
    resumed = RecordingCallbacks()
    trainers.run(job, TrainingData(train=ROWS), resumed, resume_from=saved)
    for step in (3, 4, 5, 6):
        assert resumed.metrics[step] == pytest.approx(straight.metrics[step], rel=1e-6, abs=1e-7)


def fp16_loop(callbacks):
    job = DPOJob(base_model="builtin:tiny-llama", hyperparameters={"learning_rate": 0.1, "precision": "fp16"})
    model, tokenizer = tiny()
    model = copy.deepcopy(model)
    loop = TrainingLoop(job, callbacks, model=model, tokenizer=tokenizer, num_rows=10, steps_per_epoch=5,
                        model_info=lambda: {"kind": "test", "adapter": False, "base_model": "none"},
                        compute=ComputeSettings("fp16", "sdpa", False, torch.device("cpu")))  # fmt: skip
    return loop, model


def test_fp16_overflow_skips_the_update_and_halves_the_scale_until_it_is_one():
    callbacks = RecordingCallbacks()
    loop, model = fp16_loop(callbacks)
    before = [p.detach().clone() for p in model.parameters()]
    loop.next_step()
    loop.backward(sum(p.sum() for p in model.parameters()) * 0)  # every parameter gets a gradient
    next(model.parameters()).grad.fill_(math.inf)
    metrics = loop.update(torch.tensor([0.5]), ["train/loss"])
    assert metrics["train/loss_scale"] == 2.0**16 and "train/grad_norm" not in metrics
    assert loop.scaler.get_scale() == 2.0**15
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert callbacks.events[-1] == ("warning", "step 1 skipped: fp16 gradients overflow at scale 65536")
    loop.scaler.update(1.0)  # a scale of one overflows no gradient: the values themselves are not finite
    loop.next_step()
    loop.backward(sum(p.sum() for p in model.parameters()) * 0)
    next(model.parameters()).grad.fill_(math.nan)
    with pytest.raises(NumericalError, match="non-finite gradient norm at step 2"):
        loop.update(torch.tensor([0.5]), ["train/loss"])


def test_fp16_backward_scales_the_loss_and_the_update_unscales_it():
    loop, model = fp16_loop(RecordingCallbacks())
    param = model.get_input_embeddings().weight
    loop.next_step()
    loop.backward(param[0, 0] * 3.0)
    assert param.grad[0, 0].item() == 3.0 * 2.0**16  # scaled until the update
    metrics = loop.update(torch.tensor([1.0]), ["train/loss"])
    assert metrics["train/grad_norm"] == pytest.approx(3.0)


@pytest.mark.trains
@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8}])
def test_gradient_checkpointing_changes_memory_not_results(lora):
    job = dpo_job(lora=lora, max_steps=2, gradient_checkpointing=True)
    run = prepare_run(job, TrainingData(train=ROWS), RecordingCallbacks(), resume_from=None)
    inner = run.model.get_base_model() if lora else run.model
    assert inner.is_activation_checkpointing and run.model.training
    runs = {}
    for checkpointing in (False, True):
        runs[checkpointing] = callbacks = RecordingCallbacks()
        trainers.run(dpo_job(lora=lora, max_steps=2, gradient_checkpointing=checkpointing),
                     TrainingData(train=ROWS), callbacks)  # fmt: skip
    for step in (1, 2):
        assert runs[True].metrics[step] == pytest.approx(runs[False].metrics[step], abs=1e-5)
    assert "gradient checkpointing on" in runs[True].events[1][1]


@pytest.mark.trains
def test_ppo_checkpoints_its_policy_and_critic_with_the_same_results():
    runs = {}
    for checkpointing in (False, True):
        job = PPOJob(base_model="builtin:tiny-llama", seed=0, reward=CONTAINS_E,
                     hyperparameters=PPO_SMALL | {"max_steps": 2, "gradient_checkpointing": checkpointing})
        runs[checkpointing] = callbacks = RecordingCallbacks()
        trainers.run(job, TrainingData(train=PROMPTS), callbacks)
    for step in (1, 2):
        assert runs[True].metrics[step] == pytest.approx(runs[False].metrics[step], abs=1e-5)
    assert any("gradient checkpointing on" in message for _, message in runs[True].events)


@pytest.mark.trains
def test_eager_and_sdpa_attention_give_the_same_run():
    runs = {}
    for attention in ("eager", "sdpa"):
        runs[attention] = callbacks = RecordingCallbacks()
        trainers.run(dpo_job(max_steps=2, attn_implementation=attention), TrainingData(train=ROWS), callbacks)
        assert f"attention {attention}," in callbacks.events[1][1]
    for step in (1, 2):
        assert runs["eager"].metrics[step]["train/loss"] == pytest.approx(runs["sdpa"].metrics[step]["train/loss"],
                                                                          abs=1e-4)  # fmt: skip


def test_flash_attention_on_cpu_is_refused_naming_the_field():
    with pytest.raises(UserError, match="flash_attention_2 is not available") as caught:
        trainers.run(dpo_job(attn_implementation="flash_attention_2"), TrainingData(train=ROWS), RecordingCallbacks())
    assert caught.value.param == "hyperparameters.attn_implementation"


def test_the_cli_takes_the_precision_flags():
    args = build_parser().parse_args(["dpo", "--data", "d", "--base-model", "m", "--output", "o", "--precision", "bf16",
                                      "--gradient-checkpointing", "true", "--attn-implementation", "eager"])
    assert (args.precision, args.gradient_checkpointing, args.attn_implementation) == ("bf16", True, "eager")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dpo", "--data", "d", "--base-model", "m", "--output", "o", "--precision", "fp8"])
