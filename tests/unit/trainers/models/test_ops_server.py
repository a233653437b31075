"""`trainers.models.ops_server.serve`: the model process's request loop, over real pipes, in a thread."""

import json
import os
import threading
import time

import pytest

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
            self.status = serve(stdin=stdin, stdout=stdout, **kwargs)
            stdout.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def ask(self, request) -> dict:
        self.requests.write((request if isinstance(request, str) else json.dumps(request)) + "\n")
        self.requests.flush()
        return json.loads(self.answers.readline())

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
