"""OpenAI-compatible routes: /v1/files."""

from fastapi import APIRouter

router = APIRouter(prefix="/v1/files", tags=["openai: files"])
