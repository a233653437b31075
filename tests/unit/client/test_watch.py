"""`rlhf jobs watch`: the stream read across a dropped connection, the exit status of each outcome, and what the
bar shows (metrics by job type, ETA)."""

import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from rich.console import Console

from client import stream
from client.cli import cli
from client.config import Config
from client.errors import ClientError
from client.http import Api
from client.sse import SSEParser
from client.stream import follow
from client.watch import JobView, StepRate, exit_code, metrics_text


def frame(id_: str, event: str, data: dict) -> str:
    return f"id: {id_}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


class DroppingStream(BaseHTTPRequestHandler):
    """The stream route of a job that runs 3 steps: the first connection drops after step 2, mid-body."""

    protocol_version = "HTTP/1.1"
    outcome: dict = {}
    last_event_ids: list = []
    status = "running"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        cls = type(self)
        if self.path == "/v1/jobs/job_1":
            body = json.dumps({"id": "job_1", "type": "dpo", "status": cls.status,
                               "current_step": 0 if cls.status == "running" else 3,
                               "total_steps": 3, **(cls.outcome if cls.status != "running" else {})}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        cls.last_event_ids.append(self.headers.get("Last-Event-ID"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if len(cls.last_event_ids) == 1:
            self.chunk("retry: 2000\n\n" + frame("1-0", "status", {"status": "running", "message": "started"}))
            self.chunk(frame("1-1", "metrics", {"step": 1, "values": {"train/loss": 0.69}})
                       + frame("1-2", "metrics", {"step": 2, "values": {"train/loss": 0.5}}))
            self.connection.shutdown(socket.SHUT_RDWR)  # dropped: no end of the chunked body
            self.close_connection = True
            return
        cls.status = cls.outcome["status"]
        self.chunk(": keep-alive\n\n" + frame("1-3", "metrics", {"step": 3, "values": {"train/loss": 0.25}})
                   + frame("2-3", "samples", {"step": 3, "rows": []})
                   + frame("3-3", "checkpoint", {"id": "ckpt_1", "step": 3, "size_bytes": 2048, "sha256": "ab" * 32})
                   + frame("4-3", "status", {"status": cls.status, "message": f"now {cls.status}"}))
        self.wfile.write(b"0\r\n\r\n")

    def chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


@pytest.fixture
def api_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), DroppingStream)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("outcome", "code"), [
    ({"status": "succeeded"}, 0),
    ({"status": "failed", "error": {"type": "user_error", "message": "no such model", "param": "base_model"}}, 1),
    ({"status": "cancelled"}, 2),
    ({"status": "paused"}, 3),
])
def test_watch_resumes_a_dropped_stream_and_exits_with_the_outcome(api_server, outcome, code, monkeypatch):
    monkeypatch.setattr(stream, "FIRST_RETRY_SECONDS", 0.01)
    DroppingStream.outcome, DroppingStream.last_event_ids, DroppingStream.status = outcome, [], "running"
    result = CliRunner().invoke(cli, ["--base-url", api_server, "--api-key", "k", "jobs", "watch", "job_1"])
    assert result.exit_code == code, result.output
    assert DroppingStream.last_event_ids == [None, "1-2"]  # resumed after the last frame received
    lines = result.output.splitlines()
    # Without a terminal: no bar, but the lines, a progress line at most every 10 s, and the outcome.
    assert lines[:2] == ["status running: started", "step 2/3  loss 0.5"]
    assert lines[2].startswith("connection lost (") and lines[2].endswith("; reconnecting")
    assert lines[3:6] == ["checkpoint ckpt_1 at step 3 (2.0 KB, sha256 abababababab...)",
                          f"status {outcome['status']}: now {outcome['status']}",
                          f"job_1 {outcome['status']} at step 3/3  loss 0.25"]
    if code == 1:
        assert lines[6:] == ["error (user_error) (base_model): no such model"]
    elif code == 3:
        assert lines[6:] == ["resume it with: rlhf jobs resume job_1"]
    else:
        assert lines[6:] == []


def test_the_stream_gives_up_when_the_api_stays_unreachable():
    api = Api(Config("http://127.0.0.1:9", "k", "test"))
    retries = []
    with pytest.raises(ClientError, match="lost the stream of job_1: connection lost"):
        follow(api, "job_1", lambda frames: None, retries.append, give_up_after=0.2, sleep=lambda s: time.sleep(0.05))
    assert retries and all(r.startswith("connection lost") for r in retries)


def test_exit_codes_of_the_outcomes():
    assert [exit_code(s) for s in ("succeeded", "failed", "cancelled", "paused", "running")] == [0, 1, 2, 3, 1]


def test_frames_split_anywhere_across_reads_are_parsed_once():
    text = frame("1-1", "metrics", {"step": 1, "values": {}}) + ": keep-alive\n\n" + frame("2-1", "event", {"x": 1})
    for cut in range(1, len(text)):
        parser = SSEParser()
        frames = parser.feed(text[:cut]) + parser.feed(text[cut:])
        assert [(f.id, f.event, f.data) for f in frames] == [("1-1", "metrics", {"step": 1, "values": {}}),
                                                            ("2-1", "event", {"x": 1})]


def test_the_bar_shows_the_main_metrics_of_each_job_type():
    dpo = {"train/loss": 0.6931, "rewards/accuracies": 0.5, "rewards/margins": 0.01, "logps/chosen": -40.0,
           "rewards/chosen": 0.1}
    assert metrics_text(dpo) == "loss 0.6931  acc 0.5  margin 0.01"
    grpo = {"train/loss": 0.1, "reward/mean": 0.75, "kl": 0.002, "policy/clipfrac": 0.0}
    assert metrics_text(grpo) == "loss 0.1  reward 0.75  kl 0.002"
    ppo = {"objective/scores": 1.5, "objective/kl": 0.3, "val/vf_loss": 2.0}
    assert metrics_text(ppo) == "score 1.5  kl 0.3"
    assert metrics_text({"b/x": 1.0, "a/y": 2.0}) == "a/y 2  b/x 1"


def test_a_burst_of_steps_caught_up_at_once_counts_as_one_point_of_the_rate():
    rate = StepRate()
    rate.add(100.0, 0)
    assert rate.per_second() is None
    rate.add(101.0, 40)  # a reconnect catches up 40 steps at once...
    rate.add(101.01, 80)
    rate.add(103.01, 84)  # ...then 2 steps a second
    assert rate.per_second() == pytest.approx(84 / 3.01)
    fresh = StepRate()
    fresh.add(10.0, 80)
    fresh.add(10.01, 100)
    fresh.add(12.01, 104)
    assert fresh.per_second() == pytest.approx(2.0)


def test_eta_comes_from_the_jobs_estimated_finish_else_from_the_steps_rate():
    finish = (datetime.now(UTC) + timedelta(seconds=90)).isoformat()
    job = {"id": "job_1", "type": "dpo", "status": "running", "current_step": 10, "total_steps": 110}
    view = JobView(Api(Config("http://127.0.0.1:9", "k", "test")), job | {"estimated_finish": finish},
                   Console(quiet=True))
    assert 85 < view.eta_seconds() <= 90
    view.job = dict(job)
    view.rate.add(0.0, 10)
    view.rate.add(10.0, 30)  # 2 steps a second, 80 steps left
    view.step = 30
    assert view.eta_seconds() == pytest.approx(40.0)
    view.job["steps_per_second"] = 4.0  # the server's measure wins over the client's
    assert view.eta_seconds() == pytest.approx(20.0)
    view.job["status"] = "succeeded"
    assert view.eta_seconds() is None
