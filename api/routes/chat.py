"""OpenAI-compatible routes: /v1/chat/completions, for evaluating base and fine-tuned models."""

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from api.deps import ModelOpsDep, ProjectDep, SessionDep, SettingsDep, StoreDep, get_project
from api.schemas import ErrorResponse, error_responses
from api.schemas_openai_chat import ChatCompletion, ChatCompletionRequest
from api.services import chat

router = APIRouter(prefix="/v1/chat", tags=["openai: chat"], dependencies=[Depends(get_project)],
                   responses=error_responses(400, 401, 404, 413, 422, 500, 503))


# A plain `def`: the wait for the model process runs in FastAPI's thread pool, and a stream's
# events come from a plain iterator, which Starlette also iterates there, off the event loop.
@router.post("/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "A chat.completion, or with `stream` its chunks as server-sent events"},
                        504: {"model": ErrorResponse, "description": "Generation outlived MODEL_OPS_TIMEOUT_SECONDS"}})
def create_chat_completion(session: SessionDep, settings: SettingsDep, store: StoreDep, ops: ModelOpsDep,
                           project: ProjectDep, body: ChatCompletionRequest):
    """Complete a conversation with a base model, a fine-tuned model or a checkpoint (OpenAI's request and response)."""
    if body.stream:
        events = chat.stream(session=session, settings=settings, store=store, ops=ops, project=project, body=body)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return chat.complete(session=session, settings=settings, store=store, ops=ops, project=project, body=body)
