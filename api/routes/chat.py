"""OpenAI-compatible routes: /v1/chat."""

from fastapi import APIRouter

router = APIRouter(prefix="/v1/chat", tags=["openai: chat"])
