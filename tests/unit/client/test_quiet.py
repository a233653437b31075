"""`--quiet` (`-q`): upload, create and the lists print only ids, one per line, in the API's order."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from client.cli import cli

JOBS = [{"id": "job_2", "type": "dpo", "status": "running", "base_model": "m", "current_step": 1, "total_steps": 4},
        {"id": "job_1", "type": "sft", "status": "succeeded", "base_model": "m", "current_step": 4, "total_steps": 4}]
DATASETS = [{"id": f"ds_{i}", "name": "n", "kind": "preference", "row_count": 3, "size_bytes": 10,
             "created_at": "2026-01-01T00:00:00Z"} for i in (2, 1)]
CHECKPOINTS = [{"id": f"ckpt_{step}", "step": step, "is_final": step == 30, "size_bytes": 1, "sha256": "ab" * 32,
                "metrics": {}} for step in (10, 20, 30)]
UPLOADED = {"id": "ds_9", "kind": "preference", "row_count": 2, "name": "pairs.jsonl",
            "skipped": {"count": 1, "rows": [{"line": 3, "field": "chosen", "message": "Field required"}]}}


class Api(BaseHTTPRequestHandler):
    """The routes the commands read, with fixed answers; `requests` records what was asked."""

    requests: list[tuple[str, str]] = []
    answers = {("GET", "/v1/jobs"): {"data": JOBS, "has_more": False},
               ("GET", "/v1/datasets"): {"data": DATASETS, "has_more": False},
               ("GET", "/v1/jobs/job_1/checkpoints"): {"data": CHECKPOINTS, "has_more": False},
               ("POST", "/v1/datasets"): UPLOADED,
               ("POST", "/v1/jobs"): {"id": "job_3", "type": "dpo", "status": "queued"}}

    def log_message(self, *args) -> None:
        pass

    def answer(self, method: str) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        type(self).requests.append((method, path))
        body = json.dumps(self.answers[(method, path)]).encode()
        self.send_response(201 if method == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.answer("GET")

    def do_POST(self) -> None:
        self.answer("POST")


@pytest.fixture
def rlhf():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    Api.requests = []

    def run(*args: str):
        return CliRunner().invoke(cli, ["--base-url", f"http://127.0.0.1:{server.server_address[1]}",
                                        "--api-key", "k", *args])

    yield run
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("args", "ids"), [
    (("jobs", "list", "--quiet"), ["job_2", "job_1"]),  # newest first, as the API lists them
    (("datasets", "list", "-q"), ["ds_2", "ds_1"]),
    (("checkpoints", "list", "job_1", "-q"), ["ckpt_10", "ckpt_20", "ckpt_30"]),  # by step: the last is the final
])
def test_a_quiet_list_prints_one_id_per_line_in_the_apis_order(rlhf, args, ids):
    result = rlhf(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ids


def test_a_quiet_upload_prints_only_the_id_and_reports_skipped_rows_on_stderr(rlhf, tmp_path):
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    result = rlhf("datasets", "upload", str(tmp_path / "pairs.jsonl"), "--kind", "preference", "--skip-invalid", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == "ds_9\n"
    assert "skipped 1 invalid rows" in result.stderr and "line 3, chosen: Field required" in result.stderr


def test_a_quiet_create_prints_only_the_jobs_id(rlhf):
    result = rlhf("jobs", "create", "dpo", "--base-model", "builtin:tiny-llama", "--dataset-id", "ds_1", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout == "job_3\n" and result.stderr == ""
    assert Api.requests == [("POST", "/v1/jobs")]


@pytest.mark.parametrize("args", [
    ("jobs", "list", "--json"),
    ("datasets", "list", "--json"),
    ("checkpoints", "list", "job_1", "--json"),
    ("jobs", "create", "dpo", "--base-model", "m", "--dataset-id", "ds_1", "--json"),
    ("jobs", "create", "dpo", "--base-model", "m", "--dataset-id", "ds_1", "--watch"),
])
def test_quiet_with_json_or_watch_is_refused_before_anything_is_sent(rlhf, args):
    result = rlhf(*args, "-q")
    assert result.exit_code == 2, result.output
    assert "--quiet" in result.stderr and Api.requests == []
