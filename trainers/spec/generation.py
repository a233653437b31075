"""What a chat-completion request asks of a causal LM: messages and sampling settings (torch-free).

The model process validates each `generate` request with `GenerationRequest`; the API builds one
from an OpenAI-style body, so the limits below hold whichever way a request arrives.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainers.spec.errors import UserError

BUILTIN_MODEL_REFS = ("builtin:tiny-llama",)
"""The builtin models by reference, which `trainers.models.loading.BUILTIN_MODELS` builds (a test keeps them equal)."""

MAX_CHOICES = 16
MAX_STOP_STRINGS = 4  # as OpenAI
DEFAULT_MAX_TOKENS = 1024
"""Tokens generated when a request sets no `max_tokens` (fewer when the model's context is shorter)."""


class Message(BaseModel):
    """One turn of the conversation, as the model's chat template receives it."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class GenerationRequest(BaseModel):
    """Sampling settings of one request, with OpenAI's meanings."""

    model_config = ConfigDict(extra="forbid")

    messages: list[Message] = Field(min_length=1, description="The conversation so far.")
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Most tokens per completion; None: `default_max_tokens`, or what is left of the model's context.",
    )
    default_max_tokens: int = Field(
        DEFAULT_MAX_TOKENS, ge=1, description="Tokens per completion when `max_tokens` is None (the server's setting)."
    )
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="Softmax temperature; 0 decodes greedily.")
    top_p: float = Field(
        1.0, gt=0.0, le=1.0, description="Nucleus sampling: the smallest set of tokens holding this much probability."
    )
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="Completions of the same prompt.")
    seed: int | None = Field(
        None,
        ge=0,
        lt=2**63,
        description="Same seed, model, device and settings: same completions. None draws from the process's generator.",
    )
    stop: list[str] = Field(
        [],
        max_length=MAX_STOP_STRINGS,
        description="A completion ends before the first of these strings it produces (the string itself is left out).",
    )


def parse_generation_request(data: dict) -> GenerationRequest:
    """`data` as a `GenerationRequest`; UserError naming the first bad field."""
    try:
        request = GenerationRequest.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"])
        raise UserError(f"{field}: {error['msg']}", param=field) from exc
    if any(not s for s in request.stop):
        raise UserError("stop: stop strings must not be empty", param="stop")
    return request
