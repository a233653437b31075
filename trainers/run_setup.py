"""What every trainer does before its loop, written once: `prepare_run`.

A trainer's function starts with it and continues with what only its algorithm needs::

    run = prepare_run(job, data, callbacks, resume_from=resume_from, reference="during_training")
    ...                                          # a reward, a critic, the data order
    loop = run.training_loop(steps_per_epoch)    # optimizer, schedule, resume, cadence, checkpoints
    with run.autocast():                         # every forward pass in the job's precision
        while loop.step < loop.total_steps:
            ...                                  # the algorithm's own numbered steps

`prepare_run` seeds the run, reads the checkpoint to resume from, loads the model to train (fresh
adapters for LoRA, or the checkpoint's model), tokenises the train and eval splits as the job's
`dataset_kind` says, and builds the reference policy when the algorithm has one. A new algorithm
chooses its model, its reference and nothing else; a new kind of dataset rows adds a case to
`tokenize_rows`.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from trainers.data.chat import TokenizedChat, tokenize_chat_split
from trainers.data.feedback import TokenizedExample, tokenize_feedback_split
from trainers.data.preference import TokenizedPair, tokenize_split
from trainers.data.prompts import TokenizedPrompt, tokenize_prompt_split
from trainers.distributed.callbacks import RankCallbacks
from trainers.distributed.ranks import Ranks, device_of, init_ranks
from trainers.distributed.sharding import Strategy, parallelize, resolve_strategy
from trainers.loop import AuxiliaryModel, TrainingLoop, load_run_state
from trainers.models.checkpoint import restore_master_weights
from trainers.models.loading import default_device, disable_dropout, load_policy, stored_dtype
from trainers.models.lora import load_trainable_model
from trainers.models.reward import load_reward_model
from trainers.precision import ComputeSettings, attention_of, enable_tf32, resolve_compute
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import JobSpec, LoopHyperparameters
from trainers.spec.errors import UserError
from trainers.spec.results import TrainingData

ModelKind = Literal["policy", "reward_model"]
# When a run reads the reference policy π_ref: on every step (GRPO's and PPO's KL, DPO computing its
# log-probs on the fly), or only before the first update (DPO's precomputed log-probs).
ReferenceUse = Literal["during_training", "before_training"]


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (dropout, adapter initialisation).

    Call it before building anything random (e.g. LoRA adapters), so a run is a function of its
    seed; a resumed run then restores the checkpoint's RNG states instead (`TrainingLoop`).

    Args:
        seed: the job's seed.
    """
    random.seed(seed)
    torch.manual_seed(seed)


def announce_model(
    callbacks: Callbacks,
    name: str,
    models: Sequence[nn.Module],
    device: torch.device,
    compute: ComputeSettings | None = None,
) -> None:
    """Report what was loaded: parameters in all, and how many of them train (LoRA trains few).

    Args:
        callbacks: receives the event.
        name: what the user asked for (the job's base model).
        models: the trained models (a policy, and PPO's critic).
        device: where they run.
        compute: the run's resolved settings, reported as a second event
            (`ComputeSettings.describe`), or None.
    """
    params = [p for m in models for p in m.parameters()]
    total, trained = sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
    callbacks.on_event("info", f"loaded {name} ({total:,} parameters, {trained:,} trained) on {device.type}")
    if compute is not None:
        callbacks.on_event("info", compute.describe())


def micro_batch_size(hp: LoopHyperparameters) -> int:
    """Rows per forward: a training micro-batch, and every gradient-free pass (reference, evaluation)."""
    return max(1, hp.batch_size // hp.gradient_accumulation_steps)


def tokenize_rows(
    job: JobSpec, rows: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, split: str, callbacks: Callbacks
) -> list[TokenizedPair] | list[TokenizedPrompt] | list[TokenizedChat] | list[TokenizedExample]:
    """One split's canonical rows as the job's `dataset_kind` tokenises them, truncation reported as a warning.

    Args:
        job: supplies `dataset_kind` and the length limits of its hyperparameters.
        rows: canonical rows of the split.
        tokenizer: the trained model's tokenizer.
        split: ``"train"`` or ``"eval"``, in messages.
        callbacks: receive the truncation warning.

    Returns:
        A `TokenizedPair` per preference row, a `TokenizedPrompt` per prompt row, a `TokenizedChat`
        per chat row, or a `TokenizedExample` per feedback example, in order.

    Raises:
        UserError: a row is malformed (the message names it).
    """
    hp = job.hyperparameters
    match job.dataset_kind:
        case "preference":
            return tokenize_split(rows, tokenizer, hp, split, callbacks)
        case "prompt":
            return tokenize_prompt_split(rows, tokenizer, max_prompt_length=hp.max_prompt_length, split=split,
                                         callbacks=callbacks)  # fmt: skip
        case "chat":
            return tokenize_chat_split(rows, tokenizer, hp, split, callbacks)
        case "feedback":  # feedback rows, or preference rows read as two feedback rows each
            return tokenize_feedback_split(rows, tokenizer, hp, split, callbacks)
        case kind:
            raise UserError(f"no trainer reads {kind!r} rows", param="type")


def reference_policy(
    policy: nn.Module,
    job: JobSpec,
    *,
    resumed: bool,
    device: torch.device,
    use: ReferenceUse = "during_training",
    compute: ComputeSettings | None = None,
) -> nn.Module:
    """A model whose log-probs are π_ref's (the job's base model), with as few copies as possible.

    Args:
        policy: the policy, before its first update of this run.
        job: supplies `base_model` (reloaded when resuming a full fine-tuning run).
        resumed: whether the policy comes from a checkpoint (and so is no longer the base model).
        device: where the reference runs.
        use: when the run reads it; read only ``"before_training"``, a fresh policy is its own
            reference and no copy is made.
        compute: the run's settings: a frozen copy is held in their compute type and attends
            with their attention kernel; None keeps the policy's type.

    Returns:
        For LoRA, `policy` itself (its adapters are disabled when it scores as π_ref); for a fresh
        run that reads it only before training, `policy` too; otherwise a frozen model (eval mode,
        no gradients) on `device`, in the compute type (it never steps, so needs no fp32 master copy).
    """
    if isinstance(policy, PeftModel):
        return policy
    if resumed:
        model = load_policy(job.base_model)[0]  # the policy has moved away from it
    elif use == "before_training":
        return policy  # read before the first update changes it
    else:
        model = copy.deepcopy(policy)
    if compute is not None:
        compute.prepare_frozen(model)
    return model.to(device).eval().requires_grad_(False)


@dataclass
class PreparedRun:
    """What `prepare_run` set up: the model to train, its data and reference, the state to resume.

    Attributes:
        job: the job spec.
        callbacks: the run's callbacks.
        device: where the run trains.
        compute: the resolved precision, attention kernel and gradient checkpointing.
        state: `load_run_state` of the checkpoint to resume from, or None for a fresh run.
        model: the model being trained (a peft model for LoRA), on `device`, in train mode.
        tokenizer: its tokenizer.
        train: the tokenised training rows (never empty).
        eval: the tokenised evaluation rows (empty without an eval split).
        reference: the reference policy π_ref, or None when the algorithm has none.
        model_kind: ``"causal_lm"`` or ``"reward_model"``, what checkpoints say their model is.
        ranks: the job's processes (``Ranks()`` for one); `callbacks` are then rank 0's
            (`RankCallbacks`), and `model` is spread over the ranks (`strategy`).
        strategy: ``"ddp"`` or ``"fsdp"`` on several processes, None on one.
    """

    job: JobSpec
    callbacks: Callbacks
    device: torch.device
    compute: ComputeSettings
    state: dict[str, Any] | None
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    train: list[TokenizedPair] | list[TokenizedPrompt] | list[TokenizedChat]
    eval: list[TokenizedPair] | list[TokenizedPrompt] | list[TokenizedChat]
    reference: nn.Module | None
    model_kind: str
    ranks: Ranks = dataclasses.field(default_factory=Ranks)
    strategy: Strategy | None = None

    @property
    def resumed(self) -> bool:
        """Whether the run continues from a checkpoint."""
        return self.state is not None

    @property
    def micro_batch_size(self) -> int:
        """Rows per forward (`micro_batch_size`)."""
        return micro_batch_size(self.job.hyperparameters)

    def autocast(self) -> AbstractContextManager:
        """The context every forward pass of the run goes in (`ComputeSettings.autocast`; none under fp32)."""
        return self.compute.autocast()

    def model_info(self) -> dict[str, Any]:
        """What a checkpoint says about its model: its kind, whether it is an adapter, its base."""
        return {"kind": self.model_kind, "adapter": self.job.lora is not None, "base_model": self.job.base_model}

    def training_loop(
        self,
        steps_per_epoch: int,
        *,
        model_info: Callable[[], dict[str, Any]] | None = None,
        auxiliary: AuxiliaryModel | None = None,
        extra_state: Callable[[], dict[str, Any]] | None = None,
    ) -> TrainingLoop:
        """The run's `TrainingLoop` over the prepared model, resumed from `state` when there is one.

        Args:
            steps_per_epoch: optimizer steps per pass over the training rows.
            model_info: what each checkpoint says about its model; defaults to `model_info`.
            auxiliary: a second model trained beside the first (PPO's critic), or None.
            extra_state: what else a checkpoint carries for the trainer (PPO's KL coefficient).

        Returns:
            The loop; it has called ``callbacks.on_start``.
        """
        return TrainingLoop(
            self.job, self.callbacks, model=self.model, tokenizer=self.tokenizer, state=self.state,
            model_info=model_info or self.model_info, num_rows=len(self.train), steps_per_epoch=steps_per_epoch,
            auxiliary=auxiliary, extra_state=extra_state, compute=self.compute, ranks=self.ranks,
        )  # fmt: skip

    def parallelize(self, model: nn.Module) -> nn.Module:
        """Spread a second trained model (PPO's critic) over the ranks as the main one is; as is on one process."""
        return model if self.strategy is None else parallelize(model, self.ranks, self.strategy, self.device)


def prepare_run(
    job: JobSpec,
    data: TrainingData,
    callbacks: Callbacks,
    *,
    resume_from: str | Path | None,
    model: ModelKind = "policy",
    reference: ReferenceUse | None = None,
    announce: bool = True,
) -> PreparedRun:
    """The set-up every trainer shares, in order: seed, state, model, data, reference.

    0. Join the job's other processes when torchrun started it (`init_ranks`); rank 0 alone
       reports (`RankCallbacks`). Resolve the job's precision, attention kernel and gradient
       checkpointing for the device (`resolve_compute`); TF32 matmuls on CUDA.
    1. Seed Python's and torch's generators (before adapters are drawn; a resumed run restores
       its RNG states when its `TrainingLoop` is built).
    2. Read the checkpoint's trainer state when resuming (`load_run_state`).
    3. Load the model to train (`load_trainable_model`): the base model, wrapped in fresh adapters
       for LoRA, or the checkpoint's model; fp32 master weights, the resolved attention kernel,
       gradient checkpointing when asked; dropout off when the job says so; on the device, in
       train mode; announced as events, with the resolved settings.
    4. Tokenise the train and eval splits (`tokenize_rows`).
    5. Build the reference policy (`reference_policy`) when the algorithm has one.
    6. On several processes, spread the trained model over them (`parallelize`: the job's
       ``strategy``, ``auto`` resolved by `resolve_strategy`); frozen models stay whole on each rank.

    Args:
        job: the job spec.
        data: canonical rows of the job's `dataset_kind` (train, optional eval).
        callbacks: metrics, checkpoints, events and cooperative stop.
        resume_from: a checkpoint directory to continue from, or None.
        model: ``"policy"`` (a causal LM) or ``"reward_model"`` (a one-output score head).
        reference: when the run reads π_ref, or None without one.
        announce: report the loaded model; a trainer with a second model (PPO's critic) reports
            both itself.

    Returns:
        The prepared run.

    Raises:
        UserError: the training split has no rows, a row is malformed, the checkpoint is not
            complete, or the device cannot run the precision or attention asked for;
            ModelNotFoundError for a model that cannot be loaded.
    """
    hp = job.hyperparameters
    ranks = init_ranks()  # 0.
    if ranks.distributed and not isinstance(callbacks, RankCallbacks):  # `trainers.run` has wrapped them
        callbacks = RankCallbacks(callbacks, ranks)
    device = device_of(ranks) if ranks.distributed else default_device()
    compute = resolve_compute(hp, device)
    enable_tf32(device)
    seed_everything(job.seed)  # 1.
    state = load_run_state(resume_from) if resume_from is not None else None  # 2.

    # 3. The model to train.
    match model:
        case "policy":
            load, task, model_kind = load_policy, "causal_lm", "causal_lm"
        case "reward_model":
            load, task, model_kind = load_reward_model, "seq_cls", "reward_model"
    trained, tokenizer = load_trainable_model(load, job, resume_from, task=task)
    compute.prepare_trained(trained)
    if resume_from is not None and not isinstance(trained, PeftModel):
        restore_master_weights(trained, resume_from)  # unrounded, where the checkpoint's model is bf16
    compute = dataclasses.replace(compute, attn_implementation=attention_of(trained),  # what "auto" gave
                                  checkpoint_dtype=stored_dtype(job.base_model))  # fmt: skip
    if hp.disable_dropout:
        disable_dropout(trained)
    trained.to(device).train()
    strategy = resolve_strategy(job.strategy, trained, ranks, device)
    if announce:
        announce_model(callbacks, job.base_model, [trained], device, compute)
    if strategy is not None:
        callbacks.on_event("info", f"{ranks.world_size} processes, strategy {strategy}")

    # 4. The data.
    train = tokenize_rows(job, data.train, tokenizer, "train", callbacks)
    evaluation = tokenize_rows(job, data.eval, tokenizer, "eval", callbacks) if data.eval else []
    if not train:
        raise UserError("the training data has no rows")

    # 5. The reference policy.
    frozen = None
    if reference is not None:
        frozen = reference_policy(trained, job, resumed=state is not None, device=device, use=reference,
                                  compute=compute)  # fmt: skip

    # 6. The trained model over the ranks, after any copy of it was taken (a sharded model is not copied).
    if strategy is not None:
        parallelize(trained, ranks, strategy, device)
    return PreparedRun(job=job, callbacks=callbacks, device=device, compute=compute, state=state, model=trained,
                       tokenizer=tokenizer, train=train, eval=evaluation, reference=frozen,
                       model_kind=model_kind, ranks=ranks, strategy=strategy)  # fmt: skip
