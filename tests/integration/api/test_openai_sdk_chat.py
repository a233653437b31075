"""The official `openai` SDK against a live API process (uvicorn on a port): models and chat completions,
plain and streamed, and a stream its client leaves half-way."""

from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.e2e_support import Deployment
from tests.support import embedded_settings

HI = [{"role": "user", "content": "say: hi"}]


def hub_cache(root: Path) -> Path:
    """A Hugging Face cache holding `org/tiny`: builtin:tiny-llama saved as a hub download is laid out."""
    from trainers.models.loading import load_policy

    repo, revision = root / "models--org--tiny", "0" * 40
    model, tokenizer = load_policy("builtin:tiny-llama")
    model.save_pretrained(repo / "snapshots" / revision)
    tokenizer.save_pretrained(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    (repo / "blobs").mkdir()
    return root


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """An API process of a fresh embedded deployment (no worker: nothing here trains), with its own hub cache."""
    root = tmp_path_factory.mktemp("sdk")
    dep = Deployment(embedded_settings(root), root, HF_HUB_CACHE=str(hub_cache(root / "hub")))
    try:
        dep.start_api()
        yield dep
    finally:
        dep.stop()


@pytest.fixture(scope="module")
def client(live) -> openai.OpenAI:
    key = live.client.headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url=f"http://127.0.0.1:{live.port}/v1", api_key=key, max_retries=0, timeout=120)


def model_processes(pid: int) -> list[int]:
    """The `serve-ops` processes among the descendants of `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                if b"serve-ops" in (Path("/proc") / str(child) / "cmdline").read_bytes():
                    found.append(child)
            except OSError:
                pass
    return found


def test_models_and_chat_completions_through_the_sdk(client):
    models = client.models.list()
    assert "builtin:tiny-llama" in [m.id for m in models]
    model = client.models.retrieve("builtin:tiny-llama")
    assert isinstance(model, openai.types.Model) and model.owned_by == "system"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("builtin:nothing")
    assert err.value.param == "model"

    completion = client.chat.completions.create(model="builtin:tiny-llama", messages=HI, max_tokens=8, seed=1)
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 8
    again = client.chat.completions.create(model="builtin:tiny-llama", messages=HI, max_tokens=8, seed=1)
    assert again.choices[0].message.content == choice.message.content

    # A model of the server's Hugging Face cache: listed, and served offline (the same weights, the same text).
    assert client.models.retrieve("org/tiny").owned_by == "system" and "org/tiny" in [m.id for m in models]
    hub = client.chat.completions.create(model="org/tiny", messages=HI, max_tokens=8, seed=1)
    assert hub.choices[0].message.content == choice.message.content and hub.model == "org/tiny"

    stream = client.chat.completions.create(model="builtin:tiny-llama", messages=HI, max_tokens=8, seed=1,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage == completion.usage

    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="ft:builtin:tiny-llama:x::job_0123456789abcdef01234567", messages=HI)
    assert err.value.param == "model"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="builtin:tiny-llama", messages=HI, tools=[
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    assert err.value.param == "tools"


def test_a_client_leaving_a_stream_leaves_the_model_process_serving(live, client):
    client.chat.completions.create(model="builtin:tiny-llama", messages=HI, max_tokens=1)  # the process is up
    (pid,) = model_processes(live.procs["api"].pid)
    body = {"model": "builtin:tiny-llama", "messages": HI, "max_tokens": 1000, "n": 16, "stream": True}
    with httpx.stream("POST", f"{client.base_url}chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {client.api_key}"}) as r:
        assert r.status_code == 200
        assert next(r.iter_lines()).startswith("data: ")
    # The connection is gone mid-stream; the next request is served by the same process.
    completion = client.chat.completions.create(model="builtin:tiny-llama", messages=HI, max_tokens=4)
    assert completion.usage.completion_tokens == 4
    assert model_processes(live.procs["api"].pid) == [pid]
