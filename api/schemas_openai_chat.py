"""OpenAI's shapes for /v1/chat/completions: the request, a completion, and a stream's chunks."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trainers.spec.generation import MAX_CHOICES, MAX_STOP_STRINGS


class ChatMessageIn(BaseModel):
    """A message of the conversation; content is text, or a list of text parts."""

    model_config = ConfigDict(extra="allow")  # `name` and the like are accepted and left unused

    role: str = Field(examples=["user"], description="system, developer (read as system), user or assistant.")
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = Field(False, description="Send a last chunk with `usage` and no choices.")


class ChatCompletionRequest(BaseModel):
    """OpenAI's request body. Parameters of features this server lacks (tools, logprobs, ...) are refused
    with 400 naming them; bookkeeping ones (user, metadata, store, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=1024, examples=["builtin:tiny-llama"],
                       description="A base model, a fine-tuned model (`ft:...`), a checkpoint of one "
                                   "(`ft:...:ckpt-step-N`), or `checkpoint:<id>`.")
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=4096)
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Default 1; 0 decodes greedily.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Default 1.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens per completion (deprecated by OpenAI in "
                                                           "favour of max_completion_tokens; either works).")
    max_completion_tokens: int | None = Field(None, ge=1, description="Most tokens per completion; default: "
                                                                      "CHAT_DEFAULT_MAX_TOKENS (1024), within the "
                                                                      "model's context.")
    n: int | None = Field(None, ge=1, le=MAX_CHOICES, description="Completions of the prompt; default 1.")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Same seed, same completions (same model, "
                                                                "device and settings).")
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOP_STRINGS} strings; a completion "
                                                           "ends before the first it produces.")
    stream: bool | None = Field(False, description="Send the completion as server-sent `chat.completion.chunk` "
                                                   "events while it is generated, then `data: [DONE]`.")
    stream_options: StreamOptions | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens of the rendered conversation (counted once for all choices).")
    completion_tokens: int = Field(description="Tokens generated, over all choices.")
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str = Field(examples=["chatcmpl-3f9a0c1d2e4b5a6978877665"])
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(description="The model as the request named it.")
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = Field(None, description="What served the request: the model's location "
                                                             "(builtin, checkpoint id, directory or hub id).")
