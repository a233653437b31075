"""OpenAI-compatible routes: /v1/fine_tuning/jobs."""

from fastapi import APIRouter

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["openai: fine-tuning"])
