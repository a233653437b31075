"""PPO's critic: a transformer backbone under a scalar value head that scores every token (DESIGN §7).

The critic is a sequence-classification model with one output (the shape of a reward model), used
per token: ``V(s_t) = head(h_t)`` for the final hidden state h_t at every position, where a reward
model reads only the last one. It starts from one of two models:

- ``value_model="policy"``: the backbone of the policy's base model under a value head of zeros,
  so every first estimate is 0 and the first advantages come from the rewards alone;
- ``value_model="reward_model"``: the reward model itself, backbone and score head, as InstructGPT
  does (Ouyang et al. 2022, §3.5, https://arxiv.org/abs/2203.02155): its first estimate of a
  state is already on the scale of the scores.

It reads the policy's token ids directly, so it must share the policy's vocabulary. With LoRA it
gets adapters of its own (peft keeps the head fully trainable). A checkpoint keeps it beside the
policy, as ``critic/`` (`save_critic`); it is not part of the downloadable ``model/``.
Shapes: B sequences, T tokens, P prompt tokens, A response tokens, H hidden size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from peft import PeftModel
from torch import Tensor, nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from trainers.distributed.ranks import Ranks
from trainers.distributed.sharding import is_parallel
from trainers.models.lora import apply_lora, base_of
from trainers.models.reward import backbone_and_head, load_reward_model
from trainers.rl.online import map_forward_groups
from trainers.rl.rollout import Rollout
from trainers.spec.config import LoRAConfig
from trainers.spec.errors import ModelNotFoundError, UserError

CRITIC_DIR = "critic"  # the critic's directory inside a checkpoint


def critic_from_causal_lm(causal_lm: PreTrainedModel) -> PreTrainedModel:
    """A value model holding a copy of a causal LM's backbone, under a value head of zeros.

    Args:
        causal_lm: the policy's base model (not a peft wrapper); left unchanged.

    Returns:
        A sequence-classification model with one output (CPU or `causal_lm`'s device, its dtype,
        eval mode) whose backbone weights equal `causal_lm`'s.
    """
    config = copy.deepcopy(causal_lm.config)
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):  # construction runs the library's own random init
        critic = AutoModelForSequenceClassification.from_config(config)
    critic.base_model.load_state_dict(causal_lm.base_model.state_dict())
    _, head = backbone_and_head(critic)
    nn.init.zeros_(head.weight)
    if getattr(head, "bias", None) is not None:
        nn.init.zeros_(head.bias)
    param = next(causal_lm.parameters())
    return critic.to(device=param.device, dtype=param.dtype).eval()


def initial_critic(
    value_model: Literal["policy", "reward_model"],
    *,
    policy_base: Callable[[], PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    reward_model_dir: str | Path | None = None,
    policy_rows: int | None = None,
) -> PreTrainedModel:
    """The critic before any training, without adapters.

    Args:
        value_model: ``"policy"`` (the policy's backbone, zero head) or ``"reward_model"`` (the
            reward model's backbone and score head).
        policy_base: returns the policy's base model (called for ``"policy"`` only; not changed).
        tokenizer: the policy's tokenizer; a reward model must have the same vocabulary.
        reward_model_dir: the reward model's directory, for ``"reward_model"``.
        policy_rows: the policy's embedding rows (every id it can sample); a reward model with a
            smaller table (same tokenizer, another size of the family) grows to it, new rows the
            mean row, as `trainers.models.loading.ensure_pad_token` grows a table.

    Returns:
        A one-output sequence-classification model (eval mode).

    Raises:
        UserError: ``"reward_model"`` without a reward model, or with one whose vocabulary is
            not the policy's (the critic reads the policy's token ids).
        ModelNotFoundError: the reward model cannot be loaded.
    """
    if value_model == "policy":
        return critic_from_causal_lm(policy_base())
    if reward_model_dir is None:
        raise UserError(
            "value_model 'reward_model' needs a reward model in the job's reward spec",
            param="hyperparameters.value_model",
        )
    critic, rm_tokenizer = load_reward_model(reward_model_dir)
    if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(
            "value_model 'reward_model' needs a reward model with the policy's vocabulary; "
            "use value_model 'policy' with this reward model",
            param="hyperparameters.value_model",
        )
    rows = critic.get_input_embeddings().weight.shape[0]
    if policy_rows is not None and policy_rows > rows:
        critic.resize_token_embeddings(policy_rows, mean_resizing=False)
        with torch.no_grad():
            table = critic.get_input_embeddings().weight
            table[rows:] = table[:rows].mean(dim=0)
    return critic


def trainable_critic(
    initial: Callable[[], PreTrainedModel], lora: LoRAConfig | None, *, resume_dir: str | Path | None = None
) -> PreTrainedModel | PeftModel:
    """The critic a run trains: fresh (with new adapters under LoRA), or as a checkpoint saved it.

    Adapters are drawn from torch's global generator: seed it first.

    Args:
        initial: returns `initial_critic`'s model; called for a fresh run, and under LoRA for a
            resumed one too (the base of the saved adapters). A resumed full critic is read from
            `resume_dir` alone.
        lora: the job's LoRA settings, or None for a fully trained critic.
        resume_dir: the checkpoint's ``critic/`` directory (`save_critic`), or None for a fresh run.

    Returns:
        The critic (CPU unless `initial` put it elsewhere), parameters that train requiring
        gradients, in eval mode (PPO sets the mode: train only when dropout is kept).

    Raises:
        ModelNotFoundError: the checkpoint holds no loadable critic.
    """
    if resume_dir is None:
        return apply_lora(initial(), lora, task="seq_cls").eval()
    try:
        if lora is not None:
            return PeftModel.from_pretrained(initial(), resume_dir, is_trainable=True).eval()
        return AutoModelForSequenceClassification.from_pretrained(resume_dir, dtype="auto").eval()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelNotFoundError(f"could not load the critic in {resume_dir}: {exc}", param="resume_from") from exc


def save_critic(
    critic: PreTrainedModel | PeftModel, directory: str | Path, weights: dict[str, torch.Tensor] | None = None
) -> None:
    """Write the critic as a ``save_pretrained`` directory (for LoRA: its adapter and head).

    Args:
        critic: the critic being trained.
        directory: where to write (created if missing); `trainable_critic` reads it back.
        weights: its full state dict when the critic does not hold it (a sharded run's); None:
            the critic's own.
    """
    if isinstance(critic, PeftModel):
        # The base is rebuilt by `initial_critic` on resume, embeddings included.
        critic.save_pretrained(directory, safe_serialization=True, save_embedding_layers=False, state_dict=weights)
    else:
        critic.save_pretrained(directory, safe_serialization=True, state_dict=weights)


def token_values(
    critic: nn.Module, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *, first: int = 0
) -> Tensor:
    """The critic's value estimate at every position from `first` on: ``V_t = head(h_t)``.

    Args:
        critic: a critic (possibly peft-wrapped).
        input_ids: (B, T) token ids.
        attention_mask: (B, T) 1 on real tokens.
        position_ids: (B, T) positions of the tokens (``cumsum(mask) − 1`` for left padding).
        first: the first position whose value is wanted; earlier ones skip the head.

    Returns:
        (B, T − first) float32 values, differentiable w.r.t. the critic's parameters.
    """
    backbone, head = backbone_and_head(critic)

    def values() -> Tensor:
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (B, T, H)
        return head(hidden[:, first:]).squeeze(-1).float()  # (B, T - first)

    if not is_parallel(critic):
        return values()
    # FSDP gathers the model's own parameters (embeddings, head) in hooks around a call of the
    # model; a call of its backbone alone would skip them. Call the model, with `values` as its forward.
    root = base_of(critic)
    root.forward = lambda: values()
    try:
        return root()
    finally:
        del root.forward


def response_values(critic: nn.Module, rollout: Rollout) -> Tensor:
    """Value of the state before each response token: ``V[b, a]`` is read at column ``P − 1 + a``.

    The state that response token a is chosen in ends with the token before it, which is where
    the policy's logits for token a come from too (`trainers.rl.response_logprobs.response_logits`); so
    ``V[:, 0]`` values the prompt, and the GAE recursion sees a state, then its action's reward.

    Args:
        critic: a critic (possibly peft-wrapped).
        rollout: the batch, from `trainers.rl.rollout.generate`.

    Returns:
        (B, A) float32 values, 0 on padding, differentiable w.r.t. the critic's parameters.
    """
    input_ids, attention_mask, position_ids = rollout.model_inputs()  # (B, P+A)
    P = rollout.prompt_ids.shape[1]
    values = token_values(critic, input_ids[:, :-1], attention_mask[:, :-1], position_ids[:, :-1], first=P - 1)
    return values * rollout.response_mask.to(values.dtype)  # (B, A)


@torch.no_grad()
def rollout_values(critic: nn.Module, rollout: Rollout, *, batch_size: int, ranks: Ranks | None = None) -> Tensor:
    """`response_values` without gradients, in passes of at most `batch_size` rows: the rollout's V_old.

    Args:
        critic: the critic (run in whatever mode it is in; PPO keeps it in eval mode).
        rollout: B sampled responses.
        batch_size: rows per forward.
        ranks: the job's processes, which share the passes (`map_forward_groups`; default: one).

    Returns:
        (B, A) float32 values, 0 on padding.
    """
    return map_forward_groups(lambda part: response_values(critic, part), rollout, batch_size, ranks)  # (B, A)
