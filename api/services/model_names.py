"""The OpenAI-style names of fine-tuned models, made and read in one place: `core.model_names` (the worker
resolves them as base models too)."""

from core.model_names import (  # noqa: F401
    JOB_ID_PREFIXES,
    ParsedName,
    checkpoint_model,
    fine_tuned_checkpoint,
    fine_tuned_model,
    parse,
    project_slug,
)
