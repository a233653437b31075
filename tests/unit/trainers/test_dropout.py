"""Dropout is off in every trained model by default (`disable_dropout`), and kept when asked.

GPT-2 and OPT keep dropout 0.1 in their stock configs. With dropout off, the first step has its
analytic values: DPO's loss is ln 2 (policy = reference), GRPO's KL to the reference is 0, a reward
model's loss on pairs whose two responses are equal is ln 2, and PPO's first ratio is 1.
"""

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, OPTConfig

import trainers
from tests.unit.trainers.trainer_fixtures import RecordingCallbacks
from trainers import DPOJob, GRPOJob, PPOJob, RewardModelJob, TrainingData
from trainers.data.synthetic import uppercase_preference_rows
from trainers.models.tiny import build_tokenizer
from trainers.spec.config import DPOHyperparameters, GRPOHyperparameters, PPOHyperparameters, RewardModelHyperparameters

PROMPTS = [{"prompt": p} for p in ["Hello", "Say something", "Write", "Go"]]
CONTAINS_E = {"type": "string_check", "name": "has_e", "operation": "contains", "reference": "e"}
RL = {"learning_rate": 1e-2, "rollout_batch_size": 2, "batch_size": 4, "max_new_tokens": 6, "max_prompt_length": 16,
      "max_length": 64, "max_steps": 1}  # fmt: skip
PAIRS = {"learning_rate": 1e-3, "batch_size": 4, "max_steps": 1, "max_length": 64, "max_prompt_length": 32}


# Two architectures whose stock configs keep dropout 0.1: GPT-2 (nn.Dropout modules) and OPT
# (probabilities in plain attributes, passed to functional dropout, and LayerDrop).
CONFIGS = {
    "gpt2": lambda vocab: GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                     resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1),
    "opt": lambda vocab: OPTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                   num_attention_heads=2, max_position_embeddings=128, word_embed_proj_dim=32,
                                   dropout=0.1, attention_dropout=0.1, activation_dropout=0.1),
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model_dir(request, tmp_path_factory):
    """A tiny random model of an architecture whose config keeps dropout 0.1, saved with its tokenizer."""
    tokenizer = build_tokenizer()
    config = CONFIGS[request.param](len(tokenizer))
    config.pad_token_id, config.bos_token_id, config.eos_token_id = (
        tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp(request.param)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def option(disable):
    """The hyperparameters that ask for `disable`: nothing for the default."""
    return {} if disable else {"disable_dropout": False}


def first_metrics(job, data):
    callbacks = RecordingCallbacks()
    trainers.run(job, data, callbacks)
    return callbacks.metrics[1]


@pytest.mark.trains
@pytest.mark.parametrize("disable", [True, False])
def test_dpo_first_loss_is_ln2_only_without_dropout(model_dir, disable):
    job = DPOJob(base_model=model_dir, hyperparameters=PAIRS | option(disable))
    loss = first_metrics(job, TrainingData(train=uppercase_preference_rows(4)))["train/loss"]
    if disable:
        assert loss == pytest.approx(math.log(2), abs=1e-6)
    else:
        assert abs(loss - math.log(2)) > 1e-4  # the policy's pass drops units the reference's keeps


@pytest.mark.trains
@pytest.mark.parametrize("disable", [True, False])
def test_grpo_first_kl_is_zero_only_without_dropout(model_dir, disable):
    hp = RL | {"num_generations": 2} | option(disable)
    job = GRPOJob(base_model=model_dir, reward=CONTAINS_E, hyperparameters=hp)
    kl = first_metrics(job, TrainingData(train=PROMPTS))["objective/kl"]
    if disable:
        assert kl == pytest.approx(0, abs=1e-6)
    else:
        assert kl > 1e-4


@pytest.mark.trains
@pytest.mark.parametrize("disable", [True, False])
def test_ppo_first_ratio_is_one_only_without_dropout(model_dir, disable):
    job = PPOJob(base_model=model_dir, reward=CONTAINS_E, hyperparameters=RL | {"batch_size": 2} | option(disable))
    metrics = first_metrics(job, TrainingData(train=PROMPTS))
    if disable:
        assert metrics["policy/approx_kl"] == pytest.approx(0, abs=1e-6)
    else:
        assert metrics["policy/approx_kl"] > 1e-6  # the training pass drops units the rollout's kept


@pytest.mark.trains
@pytest.mark.parametrize("disable", [True, False])
def test_reward_model_scores_equal_responses_equally_only_without_dropout(model_dir, disable):
    rows = [row | {"rejected": row["chosen"]} for row in uppercase_preference_rows(4)]
    job = RewardModelJob(base_model=model_dir, hyperparameters=PAIRS | option(disable))
    loss = first_metrics(job, TrainingData(train=rows))["train/loss"]
    if disable:
        assert loss == pytest.approx(math.log(2), abs=1e-6)
    else:
        assert abs(loss - math.log(2)) > 1e-4


def test_disable_dropout_zeroes_the_model_and_keeps_the_adapters_and_config(model_dir):
    from trainers.models.loading import disable_dropout

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = model.config.to_dict()
    model = get_peft_model(model, LoraConfig(r=2, lora_dropout=0.3, target_modules="all-linear"))
    disable_dropout(model)
    ps = {name: m.p for name, m in model.named_modules() if isinstance(m, nn.Dropout)}
    lora = {name: p for name, p in ps.items() if ".lora_dropout." in name}
    assert lora and set(lora.values()) == {0.3}  # the adapters' dropout is the user's LoRA setting
    assert {p for name, p in ps.items() if name not in lora} <= {0.0}
    floats = [(name, attr) for name, m in model.named_modules() for attr, v in vars(m).items()
              if "drop" in attr and isinstance(v, float) and v != 0]  # fmt: skip
    assert floats == []  # OPT keeps its probabilities in plain attributes
    assert model.base_model.model.config.to_dict() == config  # a saved checkpoint keeps the architecture's dropout


def test_every_trainer_has_the_option_on_by_default():
    for hp in (DPOHyperparameters, RewardModelHyperparameters, GRPOHyperparameters, PPOHyperparameters):
        assert hp().disable_dropout is True
