"""Domain errors raised by the trainers; the service maps them to job failures once.

Kept free of torch so the API can import them.
"""

from __future__ import annotations


class TrainerError(Exception):
    """Base class of every error a trainer raises on purpose."""


class UserError(TrainerError):
    """The job cannot run because of something the user supplied: model reference, data or spec.

    Args:
        message: what is wrong, naming the row, field or reference at fault.
        param: the job field at fault (e.g. ``"base_model"``, ``"hyperparameters.max_length"``),
            when there is one.
    """

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class ModelNotFoundError(UserError):
    """The model reference could not be resolved or loaded; the message names the reference."""

    def __init__(self, message: str, *, param: str | None = "base_model"):
        super().__init__(message, param=param)


class NumericalError(TrainerError):
    """The loss or gradient became NaN or infinite; the message names the step.

    Args:
        message: what went wrong and at which optimizer step.
        step: the optimizer step (1-based) at which it happened, when known.
    """

    def __init__(self, message: str, *, step: int | None = None):
        super().__init__(message)
        self.message = message
        self.step = step
