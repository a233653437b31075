"""The dashboard at /ui in a real headless Chromium, every origin but the API's blocked, against a live API and
worker: sign in, start a DPO job from the form, watch its loss curve gain points while it trains and its status
turn succeeded, download a checkpoint through a download link, see a GRPO job's rewards, KL and samples, and
the jobs list and the compare view. Any page error or console error fails the test.

With UPDATE_SCREENSHOTS=1 the screenshots go to docs/screenshots/ (the README shows them), else to tmp_path.
"""

import hashlib
import json
import os
import re
import tarfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.browser_support import chromium, offline_context, same_origin
from tests.e2e.e2e_support import ROOT, create_dataset, wait_for
from tests.support import jsonl

pytestmark = pytest.mark.e2e

HOST = "dashboard.test"  # reached by a name, as on a real deployment
VIEWPORT = {"width": 1440, "height": 1000}
WAIT_MS = 240_000  # a 2-core machine shared with a whole test suite
STEPS = 150  # several seconds of training on a loaded machine: the curve is seen growing
# Chromium logs each refused request as a console error: the two this test provokes (a wrong key, a bad value).
PROVOKED = [f"Failed to load resource: the server responded with a status of {status}"
            for status in ("401 (Unauthorized)", "422 (Unprocessable Entity)", "409 (Conflict)")]
WORDS = ["apple", "river", "stone", "cloud", "tiger", "maple", "piano", "ocean"]


@pytest.fixture(scope="module")
def browser():
    with chromium(HOST) as browser:
        yield browser


@pytest.fixture
def dashboard(embedded_service, browser):
    """A page whose requests to any origin but the API's are aborted; yields (page, origin, problems, requests)."""
    origin = f"http://{HOST}:{embedded_service.base_url.port}"
    context = offline_context(browser, origin, viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    problems: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("request", lambda request: requests.append(request.url))
    yield page, origin, problems, requests
    context.close()
    expect.set_options(timeout=5_000)  # Playwright's default, for other tests


def shots_dir(tmp_path: Path) -> Path:
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        return ROOT / "docs" / "screenshots"
    return tmp_path


def points(page, chart: str) -> int:
    return int(page.locator(f'[data-chart="{chart}"]').get_attribute("data-points"))


def test_dashboard_trains_from_the_form_live_and_downloads_a_checkpoint(embedded_service, dashboard, tmp_path):
    client, (page, origin, problems, requests) = embedded_service, dashboard
    key = client.headers["Authorization"].removeprefix("Bearer ")
    dataset = create_dataset(client)
    prompts = client.post("/v1/datasets", data={"kind": "prompt", "name": "shout"}, files={"file": (
        "prompts.jsonl", jsonl([{"prompt": f"Shout: {w}\n", "answer": w.upper()} for w in WORDS]))}).json()["id"]
    # Runs through the API first: a DPO run to compare with, a GRPO run with samples, and two paused while queued.
    other = client.post("/v1/jobs", json={
        "type": "dpo", "name": "dpo-beta-0.5", "base_model": "builtin:tiny-llama", "dataset_id": dataset,
        "hyperparameters": {"learning_rate": 0.003, "beta": 0.5, "max_steps": 40}}).json()["id"]
    grpo = client.post("/v1/jobs", json={
        "type": "grpo", "name": "grpo-shout", "base_model": "builtin:tiny-llama", "dataset_id": prompts,
        "reward": {"type": "text_similarity", "name": "close", "evaluation_metric": "fuzzy_match",
                   "reference": "{{item.answer}}"},
        "hyperparameters": {"learning_rate": 0.003, "max_steps": 16, "max_new_tokens": 8, "rollout_batch_size": 2,
                            "num_generations": 4, "batch_size": 8}}).json()["id"]
    held, raced = (client.post("/v1/jobs", json={"type": "dpo", "name": name, "base_model": "builtin:tiny-llama",
                                                "dataset_id": dataset}).json()["id"] for name in ("held", "raced"))
    for job in (held, raced):
        assert client.post(f"/v1/jobs/{job}/pause").json()["status"] == "paused"

    # Sign in: a wrong key shows the API's refusal; the project's key opens the jobs list.
    page.goto(f"{origin}/ui/")
    page.fill("#api-key", "rlhf_not-a-key")
    page.click(".signin button[type=submit]")
    expect(page.locator(".signin .notice-error")).to_contain_text("the API key is not valid")
    page.fill("#api-key", key)
    page.click(".signin button[type=submit]")
    expect(page.locator(f'tr[data-job="{other}"]')).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('rlhf-service.api-key')") == key

    # The form: DPO's fields from the OpenAPI schema with their defaults; only changes are sent.
    page.click("a[data-nav=new]")
    page.select_option("#job-type", "dpo")
    expect(page.locator('[name="hyperparameters.batch_size"]')).to_have_value("8")
    expect(page.locator('[name="hyperparameters.loss_type"]')).to_have_value("sigmoid")
    page.select_option('[name="dataset_id"]', dataset)
    page.select_option('[name="eval_dataset_id"]', dataset)
    page.fill('[name="base_model"]', "builtin:tiny-llama")
    page.fill('[name="name"]', "dpo-from-the-form")
    page.fill('[name="hyperparameters.learning_rate"]', "0.003")
    page.fill('[name="hyperparameters.max_steps"]', str(STEPS))
    page.fill('[name="hyperparameters.checkpoint_every"]', "50")
    page.fill('[name="hyperparameters.eval_every"]', "25")
    page.fill('[name="hyperparameters.max_prompt_length"]', "600")  # over max_length: the API refuses it
    page.click(".job-form button[type=submit]")
    expect(page.locator(".form-status .notice-error")).to_contain_text(
        "max_prompt_length (600) must be less than max_length (512)")
    expect(page.locator('[data-field="hyperparameters.max_prompt_length"]')).to_have_class(re.compile(r"\binvalid\b"))
    page.fill('[name="hyperparameters.max_prompt_length"]', "256")  # the default again: not sent
    assert json.loads(page.locator("pre.preview").inner_text()) == {
        "type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": dataset, "eval_dataset_id": dataset,
        "name": "dpo-from-the-form",
        "hyperparameters": {"learning_rate": 0.003, "max_steps": STEPS, "checkpoint_every": 50, "eval_every": 25}}
    streams = []
    page.on("request", lambda request: streams.append(request) if request.url.endswith("/stream") else None)
    page.click(".job-form button[type=submit]")
    page.wait_for_url(f"{origin}/ui/#/jobs/job_*")
    job_id = page.url.rsplit("/", 1)[1]

    # Live: the loss curve gains points while the job trains, then the status turns succeeded.
    page.wait_for_function("() => Number(document.querySelector('[data-chart=\"loss\"]')?.dataset.points) > 0")
    first = points(page, "loss")
    assert first < STEPS
    page.wait_for_function(f"() => Number(document.querySelector('[data-chart=\"loss\"]').dataset.points) > {first}")
    expect(page.locator(".job-head .badge")).to_have_text("succeeded")
    expect(page.locator('[data-chart="loss"]')).to_have_attribute("data-points", str(STEPS))
    # The stream was read with fetch(): the key in its header, and Last-Event-ID after the events already listed.
    stream = streams[0].all_headers()
    assert streams[0].url == f"{origin}/v1/jobs/{job_id}/stream" and stream["authorization"] == f"Bearer {key}"
    assert re.fullmatch(r"[0-9]+-0", stream["last-event-id"]), stream
    # A job that streams gets its metrics from the stream alone, not from the list as well.
    assert [url for url in requests if f"/v1/jobs/{job_id}/metrics" in url] == []
    for chart in ("rewards", "margins", "accuracies"):  # DPO's reward curves, chosen against rejected
        expect(page.locator(f'[data-chart="{chart}"]')).to_have_attribute("data-points", str(STEPS))
    # Evaluations are drawn over the training curve of the same name.
    expect(page.locator('[data-chart="loss"]')).to_have_attribute("data-keys", "train/loss|eval/loss")
    expect(page.locator(".job-head .head-progress .progress-text")).to_have_text(f"{STEPS} / {STEPS}")
    expect(page.locator(".events .event[data-type=status]").first).to_contain_text(f"finished at step {STEPS}")
    page.screenshot(path=shots_dir(tmp_path) / "dashboard-job.png")

    # A checkpoint's link: made on click, followed by the browser, no key; the archive is the stored one.
    final = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"][-1]
    row = page.locator(f'tr[data-checkpoint="{final["id"]}"]')
    with page.expect_download() as download:
        row.locator("button[data-download=archive]").click()
    archive = Path(download.value.path())
    assert download.value.suggested_filename == f"{final['id']}.tar"
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == final["sha256"]
    assert f"{final['id']}/config.json" in tarfile.open(archive).getnames()
    link = page.locator(".checkpoints-card").get_attribute("data-last-link")
    # Again, without the key, from outside the page (Playwright's own HTTP client, which knows no HOST): a link
    # serves until it expires.
    again = page.request.get(f"{embedded_service.base_url}{link}")
    assert again.status == 200 and hashlib.sha256(again.body()).hexdigest() == final["sha256"]

    # GRPO: rewards, KL and the sampled completions side by side.
    wait_for(client, grpo, lambda job: job["status"] == "succeeded", "succeeded")
    page.goto(f"{origin}/ui/#/jobs/{grpo}")
    overview = page.locator(".overview")
    expect(overview.locator('[data-chart="reward"]')).to_have_attribute("data-points", "16")
    expect(overview.locator('[data-chart="kl"]')).to_have_attribute("data-points", "16")
    last = client.get(f"/v1/jobs/{grpo}/samples", params={"limit": 1000}).json()["data"][-1]
    expect(overview.locator("[data-panel=samples] .sample-step")).to_have_value(str(last["step"]))  # the newest
    expect(overview.locator("[data-panel=samples] tbody tr")).to_have_count(len(last["rows"]))
    page.screenshot(path=shots_dir(tmp_path) / "dashboard-grpo.png")

    # Actions: a paused job offers resume and cancel; a refused one (cancelled meanwhile) shows the API's 409.
    page.goto(f"{origin}/ui/#/jobs/{raced}")
    expect(page.locator(".job-head [data-action]")).to_have_text(["Resume", "Cancel"])
    assert client.post(f"/v1/jobs/{raced}/cancel").json()["status"] == "cancelled"
    page.click(".job-head [data-action=resume]")
    expect(page.locator(".notice-error")).to_contain_text("resume refused")
    expect(page.locator(".job-head .badge")).to_have_text("cancelled")
    expect(page.locator(".job-head [data-action]")).to_have_count(0)

    # The jobs list, then two DPO runs compared: one chart per metric, one curve per run.
    wait_for(client, other, lambda job: job["status"] == "succeeded", "succeeded")
    page.click("a[data-nav=jobs]")
    expect(page.locator(f'tr[data-job="{job_id}"]')).to_have_attribute("data-status", "succeeded")
    page.locator(f'tr[data-job="{job_id}"] input[type=checkbox]').check()
    page.locator(f'tr[data-job="{other}"] input[type=checkbox]').check()
    page.screenshot(path=shots_dir(tmp_path) / "dashboard-jobs.png")
    page.click("text=Compare (2)")
    expect(page.locator(".legend-item")).to_have_count(2)
    expect(page.locator('[data-chart="train/loss"]')).to_have_attribute("data-points", str(STEPS))
    expect(page.locator('[data-chart="rewards/margins"] .u-legend .u-series')).to_have_count(3)  # step, 2 jobs

    # Datasets: the list and a preview of the rows.
    page.click("a[data-nav=datasets]")
    page.click(f'tr[data-dataset="{dataset}"] a')
    expect(page.locator(".rows-table tbody tr")).to_have_count(20)
    expect(page.locator(".rows-table thead")).to_contain_text("chosen")

    assert problems == PROVOKED
    assert [url for url in requests if not same_origin(url, origin)] == []
