"""/v1/chat/completions through the app and its real model process (embedded deployment).

The tests share one app, so one model process (starting one costs seconds); the last one restarts it.
"""

import json

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.services import modelops
from tests.integration.api.chat_support import job_with_checkpoints, save_models
from tests.support import embedded_settings, new_project_key

HI = [{"role": "user", "content": "say: hi"}]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return save_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    settings = embedded_settings(tmp_path_factory.mktemp("chat"))
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {new_project_key(settings)}"}) as client:
        yield client


def complete(client, **body):
    return client.post("/v1/chat/completions", json={"model": "builtin:tiny-llama", "messages": HI} | body)


def events(response) -> list:
    """The `data:` payloads of a server-sent event stream, `[DONE]` as the string."""
    lines = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def texts(completion) -> list[str]:
    return [c["message"]["content"] for c in completion["choices"]]


def test_a_completion_has_openai_shape_and_a_seed_reproduces_it_streamed_or_not(app):
    r = complete(app, max_tokens=8, seed=1, n=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "builtin:tiny-llama" and isinstance(body["created"], int)
    assert [(c["index"], c["finish_reason"], c["message"]["role"]) for c in body["choices"]] == [
        (0, "length", "assistant"), (1, "length", "assistant")]
    assert body["usage"]["completion_tokens"] == 16
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 16
    assert texts(complete(app, max_completion_tokens=8, seed=1, n=2).json()) == texts(body)

    r = complete(app, max_tokens=8, seed=1, n=2, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = events(r)
    assert chunks[-1] == "[DONE]"
    chunks = chunks[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [{"role": "assistant", "content": ""}] * 2
    streamed = ["".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]
                        and c["choices"][0]["index"] == i) for i in (0, 1)]  # fmt: skip
    assert streamed == texts(body)
    finishes = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [(f["index"], f["finish_reason"]) for f in finishes] == [(0, "length"), (1, "length")]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == body["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert "usage" not in events(complete(app, max_tokens=2, stream=True))[0]  # without include_usage

    stop = next(ch for ch in texts(body)[0] if ch.isascii() and ch.isprintable())
    stopped = complete(app, max_tokens=8, seed=1, n=2, stop=stop).json()
    assert texts(stopped)[0] == texts(body)[0][: texts(body)[0].index(stop)]
    assert stopped["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("body, status, param", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ({"logprobs": True}, 400, "logprobs"),
    ({"response_format": {"type": "json_object"}}, 400, "response_format"),
    ({"frobnicate": 1}, 400, "frobnicate"),
    ({"temperature": 3}, 400, "temperature"),
    ({"n": 0}, 400, "n"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "c"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
     "messages[0].content"),
    ({"stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({"max_tokens": 4, "max_completion_tokens": 5}, 400, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"stop": ""}, 400, "stop"),
    ({"model": "builtin:nothing"}, 404, "model"),
    ({"model": "ft:builtin:tiny-llama:test::job_0123456789abcdef01234567"}, 404, "model"),
    ({"model": "checkpoint:ckpt_0123456789abcdef01234567", "stream": True}, 404, "model"),
])  # fmt: skip
def test_refused_requests_name_their_parameter_and_never_reach_the_model_process(app, body, status, param):
    ops = app.app.state.model_ops
    before = modelops.stats(ops, timeout=60)["pid"], ops.starts
    r = complete(app, **body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    assert (ops.pid, ops.starts) == before


def test_requests_the_model_cannot_take_are_refused_by_the_model_process(app):
    for body, param in [({"max_tokens": 5000}, "max_tokens"),
                        ({"messages": [{"role": "user", "content": "x" * 2000}], "stream": True}, "messages")]:
        r = complete(app, **body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
    # Harmless bookkeeping parameters and the "off" values of refused features are accepted.
    ok = complete(app, max_tokens=2, user="u", store=False, metadata={"k": "v"}, tools=[], logprobs=False,
                  frequency_penalty=0, messages=[{"role": "developer", "content": "Be brief."},
                                                 {"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert ok.status_code == 200, ok.text


def test_fine_tuned_models_and_checkpoints_complete_as_their_weights_and_reward_models_are_refused(app, model_dirs):
    settings = app.app.state.settings
    job = job_with_checkpoints(app, settings, model_dirs["lm"], suffix="demo")
    reward = job_with_checkpoints(app, settings, model_dirs["rm"], job_type="reward_model", steps=(1,))
    checkpoints = {c["step"]: c["id"] for c in app.get(f"/v1/jobs/{job}/checkpoints").json()["data"]}
    reward_ckpt = app.get(f"/v1/jobs/{reward}/checkpoints").json()["data"][0]["id"]
    model = f"ft:builtin:tiny-llama:test:demo:{job}"

    # The checkpoints hold builtin:tiny-llama's own weights: the same seed gives the same text.
    expected = texts(complete(app, max_tokens=6, seed=3).json())
    for name in (model, f"{model}:ckpt-step-1", f"checkpoint:{checkpoints[2]}"):
        r = complete(app, model=name, max_tokens=6, seed=3)
        assert r.status_code == 200, (name, r.text)
        assert r.json()["model"] == name and texts(r.json()) == expected
    fingerprint = complete(app, model=model, max_tokens=1).json()["system_fingerprint"]
    assert fingerprint == f"checkpoint:{checkpoints[2]}"  # the final checkpoint

    for name in (f"ft:builtin:tiny-llama:test::{reward}", f"checkpoint:{reward_ckpt}"):
        r = complete(app, model=name, max_tokens=2)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "model" and "not a causal LM" in r.json()["error"]["message"]

    assert app.delete(f"/v1/models/{model}").status_code == 200
    for name in (model, f"{model}:ckpt-step-1", f"checkpoint:{checkpoints[2]}"):
        r = complete(app, model=name, max_tokens=2)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["param"] == "model"


def test_a_stream_closed_early_or_past_its_deadline_leaves_the_model_process_serving(app):
    ops = app.app.state.model_ops
    params = {"messages": HI, "max_tokens": 1000, "n": 16, "seed": 1}
    pieces = modelops.generate_stream(ops, "builtin:tiny-llama", params, timeout=120)
    assert "text" in next(pieces)
    pieces.close()  # the consumer leaves: the process is asked to stop, and released once it has
    pid, starts = ops.pid, ops.starts
    assert modelops.stats(ops, timeout=60)["pid"] == pid and ops.starts == starts

    pieces = modelops.generate_stream(ops, "builtin:tiny-llama", params, timeout=0.05)
    with pytest.raises(modelops.ModelOpTimeout):
        list(pieces)  # 16 × 1000 tokens never fit in 50 ms: the process is killed and restarted
    assert complete(app, max_tokens=2).status_code == 200
    assert ops.starts == starts + 1 and ops.pid != pid

    pieces = modelops.generate_stream(ops, "builtin:tiny-llama", params, timeout=120)
    assert "text" in next(pieces)
    ops.close()  # shutting down with a stream in flight: it is stopped, then the process ends
    assert ops.pid is None
    usage = list(pieces)[-1]["result"]["usage"]  # the answer still came, early
    assert usage["completion_tokens"] < 16 * 1000


def test_a_request_without_max_tokens_generates_up_to_the_servers_default(tmp_path):
    settings = embedded_settings(tmp_path, chat_default_max_tokens=3)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {new_project_key(settings)}"}) as client:
        r = complete(client, temperature=0)  # greedy decoding of this model produces no EOS this early
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 3 and r.json()["choices"][0]["finish_reason"] == "length"
        assert complete(client, max_tokens=5, seed=2).json()["usage"]["completion_tokens"] == 5
