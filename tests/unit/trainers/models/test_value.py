"""PPO's critic: per-token values of the response states, initialised from the policy or a reward model,
with optional adapters, saved and loaded back."""

import copy

import pytest
import torch
from peft import PeftModel
from transformers import LlamaForSequenceClassification

from tests.unit.trainers.trainer_fixtures import tiny
from trainers.models.reward import load_reward_model, rewards
from trainers.models.value import (
    critic_from_causal_lm,
    initial_critic,
    response_values,
    save_critic,
    trainable_critic,
)
from trainers.rl.rollout import generate
from trainers.spec.config import LoRAConfig
from trainers.spec.errors import UserError

PAD, BOS, EOS = 256, 257, 258
PROMPTS = [[BOS, 104, 105], [BOS, 97, 98, 99, 65, 66, 67], [BOS]]


@pytest.fixture(scope="module")
def rollout():
    model, _ = tiny()
    return generate(model, PROMPTS, pad_token_id=PAD, eos_token_id=EOS, max_new_tokens=6,
                    generator=torch.Generator().manual_seed(0))  # fmt: skip


def random_head(critic):
    critic = copy.deepcopy(critic)
    torch.nn.init.normal_(critic.score.weight, generator=torch.Generator().manual_seed(1))
    return critic


def naive_values(critic, rollout):
    """Each row alone and unpadded: the head's output at the positions before each response token."""
    rows = []
    for b in range(len(PROMPTS)):
        prompt = rollout.prompt_ids[b][rollout.prompt_mask[b].bool()]
        response = rollout.response_ids[b][rollout.response_mask[b].bool()]
        hidden = critic.model(input_ids=torch.cat([prompt, response])[None]).last_hidden_state  # (1, T, H)
        scores = critic.score(hidden)[0, :, 0]  # (T,)
        values = torch.zeros(rollout.response_ids.shape[1])
        values[: len(response)] = scores[len(prompt) - 1 : len(prompt) - 1 + len(response)]
        rows.append(values)
    return torch.stack(rows)  # (B, A)


@torch.no_grad()
def test_values_of_the_response_states_match_each_row_alone(rollout):
    policy, _ = tiny()
    critic = random_head(critic_from_causal_lm(policy))
    values = response_values(critic, rollout)  # (B, A)
    assert values.shape == rollout.response_ids.shape and values.dtype == torch.float32
    assert torch.all(values[rollout.response_mask == 0] == 0) and values.abs().sum() > 0
    torch.testing.assert_close(values, naive_values(critic, rollout), rtol=0, atol=1e-5)


def test_a_critic_from_the_policy_copies_its_backbone_under_a_zero_head(rollout):
    policy, _ = tiny()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    critic = critic_from_causal_lm(policy)
    assert isinstance(critic, LlamaForSequenceClassification) and critic.config.num_labels == 1
    backbone = policy.model.state_dict()
    assert critic.model.state_dict().keys() == backbone.keys()
    assert all(torch.equal(critic.model.state_dict()[k], backbone[k]) for k in backbone)
    assert torch.all(critic.score.weight == 0)
    assert torch.all(response_values(critic, rollout) == 0)
    with torch.no_grad():
        critic.model.embed_tokens.weight.add_(1.0)  # a copy: training the critic leaves the policy alone
    assert all(torch.equal(v, before[k]) for k, v in policy.state_dict().items())


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    model, tokenizer = load_reward_model("builtin:tiny-llama")
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)  # a trained reward model's backbone differs from the policy's
    directory = tmp_path_factory.mktemp("reward_model")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@torch.no_grad()
def test_a_critic_from_the_reward_model_values_a_whole_completion_as_its_reward(reward_model_dir, rollout):
    _, tokenizer = tiny()
    critic = initial_critic("reward_model", policy_base=pytest.fail, tokenizer=tokenizer,
                            reward_model_dir=reward_model_dir)  # fmt: skip
    reward_model, _ = load_reward_model(reward_model_dir)
    expected_weights = reward_model.state_dict()
    assert all(torch.equal(w, expected_weights[k]) for k, w in critic.state_dict().items())
    # The state after the whole completion is what the reward model scores: one token further
    # than any response value, so it is read from a rollout that is one token longer.
    one_more = copy.copy(rollout)
    one_more.response_ids = torch.cat([rollout.response_ids, torch.full((3, 1), PAD)], dim=1)
    one_more.response_mask = torch.cat([rollout.response_mask, torch.zeros(3, 1, dtype=torch.long)], dim=1)
    last = rollout.response_lengths  # (B,) the column after each row's last token
    one_more.response_mask[torch.arange(3), last] = 1
    values = response_values(critic, one_more)  # (B, A + 1)
    input_ids, attention_mask, _ = rollout.model_inputs()  # (B, P+A)
    for b in range(3):
        row = input_ids[b][attention_mask[b].bool()][None]  # (1, T) unpadded: no position shift
        expected = rewards(reward_model, row, torch.ones_like(row))  # (1,)
        torch.testing.assert_close(values[b, last[b]], expected[0], rtol=0, atol=1e-5)


def test_a_reward_model_critic_needs_a_reward_model_with_the_policy_vocabulary(reward_model_dir, tmp_path):
    _, tokenizer = tiny()
    with pytest.raises(UserError, match="needs a reward model") as info:
        initial_critic("reward_model", policy_base=pytest.fail, tokenizer=tokenizer)
    assert info.value.param == "hyperparameters.value_model"
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<extra>"])
    with pytest.raises(UserError, match="policy's vocabulary"):
        initial_critic("reward_model", policy_base=pytest.fail, tokenizer=other, reward_model_dir=reward_model_dir)


@pytest.mark.trains
@pytest.mark.parametrize("lora", [None, LoRAConfig(r=4, dropout=0.0)])
def test_the_critic_trains_and_loads_back_from_its_directory(lora, rollout, tmp_path):
    policy, tokenizer = tiny()

    def initial():
        return initial_critic("policy", policy_base=lambda: policy, tokenizer=tokenizer)

    torch.manual_seed(0)
    critic = trainable_critic(initial, lora)
    assert not critic.training
    trained = {n for n, p in critic.named_parameters() if p.requires_grad}
    if lora is None:
        assert trained == {n for n, _ in critic.named_parameters()}
    else:
        assert isinstance(critic, PeftModel)
        assert all("lora_" in n or "score" in n for n in trained) and any("score" in n for n in trained)
    optimizer = torch.optim.SGD([p for p in critic.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):  # move the head away from zero, and then the backbone (or its adapters)
        (response_values(critic, rollout) - 1.0).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    values = response_values(critic, rollout).detach()
    assert values.abs().sum() > 0

    save_critic(critic, tmp_path / "critic")
    loaded = trainable_critic(initial if lora else pytest.fail, lora, resume_dir=tmp_path / "critic")
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == trained
    torch.testing.assert_close(response_values(loaded, rollout).detach(), values, rtol=0, atol=1e-6)
