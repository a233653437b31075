"""OpenAI's shapes for /v1/models: a model, a list of them, a deleted one."""

from typing import Literal

from pydantic import BaseModel, Field


class ModelObject(BaseModel):
    """A model this server can complete chats with."""

    id: str = Field(examples=["builtin:tiny-llama", "ft:builtin:tiny-llama:my-project:demo:job_3f9a0c1d2e4b5a69788776"])
    object: Literal["model"] = "model"
    created: int = Field(description="Unix seconds: when the model was trained, downloaded or saved (0 for builtins).")
    owned_by: str = Field(description='"system" for base models, the project\'s name (as in model names) for '
                                      "the project's fine-tuned models and checkpoints.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
