"""Hyperparameters of supervised fine-tuning (torch-free): the `hyperparameters` of an SFT job.

Defaults follow TRL's `SFTConfig` (learning rate 2e-5, 3 epochs, batch 8, max_length 1024), except
that the loss is on assistant tokens only by default (TRL: opt-in ``assistant_only_loss``), as in
InstructGPT's and OpenAI's supervised fine-tuning, where the model learns to answer, not to write
prompts.
"""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from trainers.spec.hyperparameters import LoopHyperparameters


class SFTHyperparameters(LoopHyperparameters):
    """Hyperparameters of supervised fine-tuning on chat rows (cross-entropy on the trained tokens).

    `batch_size` counts rows (conversations) per optimizer step, with or without packing. The loss
    of a step is the cross-entropy summed over its trained tokens divided by their number over the
    whole step (all micro-batches and processes), so it does not depend on micro-batching.
    """

    learning_rate: float = Field(2e-5, gt=0, le=1, description="Peak AdamW learning rate (TRL's SFT default).")
    batch_size: int = Field(
        8, ge=1, le=1024, description="Rows (conversations) per optimizer step, split across gradient accumulation."
    )
    n_epochs: int = Field(3, ge=1, le=100, description="Passes over the training data (TRL's default).")
    max_length: int = Field(
        1024, ge=8, le=32768,
        description="Most tokens of a row: a longer conversation keeps its first max_length tokens "
                    "(the cut-off part is not trained on).",
    )
    max_prompt_length: int | None = Field(
        None, description="Not used by SFT (rows are cut on the right at max_length); must be left unset."
    )
    assistant_only_loss: bool = Field(
        True,
        description="Train on the assistant messages only (their content and the end of their turn, as the "
                    "chat template renders it); for prompt/completion rows, on the completion and EOS only. "
                    "false trains on every token of the row.",
    )
    packing: bool = Field(
        False,
        description="Padding-free packing: the rows of a micro-batch are laid end to end in sequences of up "
                    "to max_length tokens, positions restarting at each row so that no row attends to another "
                    "(transformers' packed-sequence attention). Same loss as unpacked rows, less padding.",
    )

    @field_validator("max_prompt_length")
    @classmethod
    def _prompt_shorter_than_total(cls, value: int | None, info: ValidationInfo) -> int | None:
        # Overrides the base model's check of the same name: an SFT row has no separate prompt limit.
        if value is not None:
            raise ValueError("does not apply to SFT: rows are cut on the right at max_length; leave it unset")
        return value
