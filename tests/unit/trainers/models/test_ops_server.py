"""`trainers.models.ops_server.serve`: the model process's request loop, over real pipes, in a thread."""

import json
import os
import threading
import time

import pytest

from tests.support import descriptors_past_select_limit
from trainers.models.checkpoint import write_model_info
from trainers.models.ops_server import serve
from trainers.models.reward import load_reward_model
from trainers.models.scoring import score

ITEMS = [{"text": "say: hi\nHELLO"}, {"prompt": "say: yo\n", "response": "YO"}]


@pytest.fixture(scope="module")
def reward_dirs(tmp_path_factory):
    """Two reward-model directories (builtin:tiny-llama with its seeded score head)."""
    dirs = []
    for name in ("one", "two"):
        directory = tmp_path_factory.mktemp(name)
        model, tokenizer = load_reward_model("builtin:tiny-llama")
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        write_model_info(directory, {"kind": "reward_model", "adapter": False, "reward_mean": 0.5, "reward_std": 2.0})
        dirs.append(directory)
    return dirs


class Server:
    """`serve` in a thread, talked to over pipes as the API talks to the process."""

    def __init__(self, **kwargs):
        requests_r, requests_w = os.pipe()
        answers_r, answers_w = os.pipe()
        self.requests = os.fdopen(requests_w, "w")
        self.answers = os.fdopen(answers_r, "r")
        stdin, stdout = os.fdopen(requests_r, "r"), os.fdopen(answers_w, "w")
        self.status = None

        def run():
            try:
                self.status = serve(stdin=stdin, stdout=stdout, **kwargs)
            finally:  # a loop that dies ends its answers, so a test fails instead of waiting forever
                stdout.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def ask(self, request) -> dict:
        self.requests.write((request if isinstance(request, str) else json.dumps(request)) + "\n")
        self.requests.flush()
        line = self.answers.readline()
        assert line, "the request loop ended without answering"
        return json.loads(line)

    def close(self) -> None:
        self.requests.close()
        self.thread.join(60)


def test_scores_equal_the_one_shot_scorer_and_errors_leave_it_serving(reward_dirs):
    server = Server(cache_bytes=10**9, idle_seconds=600)
    try:
        one = str(reward_dirs[0])
        bad = server.ask({"op": "score", "model_dir": one, "items": [{"prompt": [], "response": "x"}]})
        assert bad == {"ok": False, "error": "user_error", "param": "items[0].prompt",
                       "message": "items[0].prompt: expected a string or a non-empty list of {'role', 'content'} "
                                  "messages"}  # fmt: skip
        assert server.ask("not json")["error"] == "user_error"
        assert server.ask({"op": "train"})["param"] == "op"
        assert server.ask({"op": "score", "model_dir": "/nonexistent", "items": ITEMS})["param"] == "model_dir"
        first = server.ask({"op": "score", "model_dir": one, "items": ITEMS})
        again = server.ask({"op": "score", "model_dir": one, "items": ITEMS})
        assert first == again == {"ok": True, "result": score(reward_dirs[0], ITEMS)}
        stats = server.ask({"op": "stats"})["result"]
        assert stats["loads"] == 1 and stats["cached"] == [str(reward_dirs[0].resolve())]
        assert stats["cached_bytes"] > 0 and stats["pid"] == os.getpid()
    finally:
        server.close()
    assert server.status == 0  # stdin closed: the loop ends


def test_idle_models_are_unloaded_and_loaded_again_on_demand(reward_dirs):
    server = Server(cache_bytes=10**9, idle_seconds=0.05)
    try:
        request = {"op": "score", "model_dir": str(reward_dirs[1]), "items": ITEMS}
        assert server.ask(request)["ok"]
        for _ in range(300):  # wait for an idle period to pass without a request
            time.sleep(0.2)
            if not server.ask({"op": "stats"})["result"]["cached"]:
                break
        assert server.ask({"op": "stats"})["result"]["cached"] == []
        assert server.ask(request)["ok"]
        assert server.ask({"op": "stats"})["result"]["loads"] == 2
    finally:
        server.close()


CHAT = {"op": "generate", "model": "builtin:tiny-llama", "messages": [{"role": "user", "content": "say: hi"}]}


def read_stream(server: Server) -> tuple[list[dict], dict]:
    """The chunk lines of a streaming request, and its answer line."""
    chunks = []
    while "chunk" in (message := json.loads(server.answers.readline())):
        chunks.append(message["chunk"])
    return chunks, message


def test_generate_answers_as_the_library_and_streams_the_same_text_in_chunks():
    from trainers.models.chat_generation import generate_chat, load_chat_model
    from trainers.spec.generation import parse_generation_request

    server = Server(cache_bytes=10**9, idle_seconds=600)
    try:
        request = CHAT | {"max_tokens": 16, "seed": 4, "n": 2}
        plain = server.ask(request)
        params = parse_generation_request({k: v for k, v in request.items() if k not in ("op", "model")})
        expected = generate_chat(load_chat_model("builtin:tiny-llama"), params)
        assert plain == {"ok": True, "result": expected}
        server.requests.write(json.dumps(request | {"stream": True}) + "\n")
        server.requests.flush()
        chunks, answer = read_stream(server)
        assert answer == plain
        for choice in plain["result"]["choices"]:
            assert "".join(c["text"] for c in chunks if c["index"] == choice["index"]) == choice["text"]
        bad = server.ask(CHAT | {"temperature": 5})
        assert (bad["ok"], bad["error"], bad["param"]) == (False, "user_error", "temperature")
        assert server.ask(CHAT | {"model": "builtin:nothing"})["param"] == "model"
        stats = server.ask({"op": "stats"})["result"]
        assert stats["loads"] == 1 and stats["entries"][0]["kind"] == "chat_model"
    finally:
        server.close()


def test_a_cancel_line_ends_a_stream_early_and_a_late_one_is_left_unanswered():
    server = Server(cache_bytes=10**9, idle_seconds=600)
    try:
        assert server.ask(CHAT | {"max_tokens": 2})["ok"]  # the model is loaded
        server.requests.write(json.dumps(CHAT | {"max_tokens": 1000, "seed": 1, "stream": True}) + "\n")
        server.requests.flush()
        assert "chunk" in json.loads(server.answers.readline())  # generation has started
        server.requests.write('{"op": "cancel"}\n')
        server.requests.flush()
        _, answer = read_stream(server)
        (choice,) = answer["result"]["choices"]
        assert choice["finish_reason"] == "length" and choice["completion_tokens"] < 1000
        server.requests.write('{"op": "cancel"}\n')  # after its stream: read, and no answer
        assert server.ask({"op": "stats"})["ok"]
    finally:
        server.close()


def test_requests_and_a_stream_cancel_work_on_descriptors_past_1024():
    with descriptors_past_select_limit():
        server = Server(cache_bytes=10**9, idle_seconds=600)
        try:
            assert server.requests.fileno() > 1024
            assert server.ask({"op": "stats"})["ok"]
            # The cancel is there before the first token: the stream notices it at once.
            server.requests.write(json.dumps(CHAT | {"max_tokens": 1000, "seed": 1, "stream": True}) + "\n")
            server.requests.write('{"op": "cancel"}\n')
            server.requests.flush()
            _, answer = read_stream(server)
            (choice,) = answer["result"]["choices"]
            assert choice["completion_tokens"] < 10
            assert server.ask({"op": "stats"})["ok"]
        finally:
            server.close()
        assert server.status == 0
