"""The README's "whole flow with curl", run with bash as it is written, against a live API and worker.

The bash blocks of that section are taken from README.md itself, so the documented flow cannot
drift from the service: a renamed field, a changed default page size or a broken download makes
this test fail. The script runs from a stand-in checkout (the project's venv and `var/api-key`, as
`scripts/serve.sh` leaves them), with `BASE` pointing at the test's API.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.e2e.e2e_support import DEADLINE, ROOT, deployment, section_blocks
from tests.support import parse_sse

pytestmark = pytest.mark.e2e
SECTION = "## The whole flow with curl"


def test_section_blocks_stop_at_the_next_heading_and_skip_other_languages():
    markdown = "\n".join(["## A", "```bash", "echo a", "## not a heading", "```", "```text", "x", "```",
                          "```bash", "echo b", "```", "## B", "```bash", "echo c", "```"])
    assert section_blocks(markdown, "## A") == ["echo a\n## not a heading\n", "echo b\n"]


def test_the_readme_curl_flow_runs_as_written(request, tmp_path):
    script = "\n".join(section_blocks((ROOT / "README.md").read_text(), SECTION))
    assert "curl" in script and "sha256sum -c" in script
    # The address is written once, as BASE's default; every request goes through $BASE.
    assert [line.split("=")[0] for line in script.splitlines() if "127.0.0.1" in line] == ["BASE"]

    service_root, checkout, scratch = tmp_path / "service", tmp_path / "checkout", tmp_path / "tmp"
    for folder in (service_root, checkout / "var", scratch):
        folder.mkdir(parents=True)
    (checkout / ".venv").symlink_to(sys.prefix)  # the venv running this test: it has transformers
    (tmp_path / "flow.sh").write_text(script)

    with deployment(request, service_root, backend="embedded") as dep:
        (checkout / "var" / "api-key").write_text(dep.client.headers["Authorization"].removeprefix("Bearer "))
        env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "BASE")} | {
            "BASE": f"http://127.0.0.1:{dep.port}", "TMPDIR": str(scratch), "HF_HUB_OFFLINE": "1"}
        # Strict mode: a step that fails stops the run here, where a reader would see it go wrong.
        proc = subprocess.run(["bash", "-e", "-u", "-o", "pipefail", str(tmp_path / "flow.sh")], cwd=checkout,
                              env=env, capture_output=True, text=True, timeout=2 * DEADLINE)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    out = proc.stdout.splitlines()

    # 3. the live stream: every step, then the end
    frames = parse_sse(proc.stdout)
    assert [f["data"]["step"] for f in frames if f["event"] == "metrics"] == list(range(1, 31))
    assert [f["data"]["status"] for f in frames if f["event"] == "status"][-1] == "succeeded"

    # 4.-5. one JSON answer per line, in the order the README prints them
    job, checkpoints, first_page, next_page, scores = [json.loads(line) for line in out if line.startswith("{")]
    assert job["status"] == "succeeded" and job["current_step"] == job["total_steps"] == 30
    assert [c["step"] for c in checkpoints["data"]] == [10, 20, 30]
    assert [m["step"] for m in first_page["data"]] == list(range(1, 21)) and first_page["has_more"]
    assert [m["step"] for m in next_page["data"]] == list(range(21, 31)) and not next_page["has_more"]
    assert "30 metrics.jsonl" in out

    # 6. the download matched its sha256 and loaded with transformers
    final = checkpoints["data"][-1]
    assert final["is_final"] and f"{final['id']}.tar: OK" in out
    assert any(re.fullmatch(r"loaded LlamaForCausalLM \d+ parameters", line) for line in out), out[-5:]

    # The reward model ranks the uppercase answer above the lowercase one, as it was trained to.
    assert len(scores["data"]) == 2 and scores["data"][0]["score"] > scores["data"][1]["score"]

    # Every file went into one scratch folder; the checkout holds what it held before.
    assert sorted(p.name for p in checkout.iterdir()) == [".venv", "var"]
    assert [p.name for p in (checkout / "var").iterdir()] == ["api-key"]
    (work,) = scratch.glob("tmp.*")  # what mktemp -d made (the Python step leaves torch caches beside it)
    steps = [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))
    assert {"pairs.jsonl", f"{final['id']}.tar", final["id"]} <= {p.name for p in work.iterdir()}
