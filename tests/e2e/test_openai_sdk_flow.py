"""The OpenAI-compatible layer driven by the official `openai` SDK, against a live API and worker.

README's "OpenAI SDK" section runs as written (each method: upload, create, events until it ends,
checkpoints, chat completions on the fine-tuned model, plain and streamed). The other tests run on
both deployments: pause then resume continues from the checkpoint, cancel, pagination of jobs and
events, and the SDK's own exceptions (with `param`) for the mistakes users make.
"""

import json
import os
import re
import subprocess
import sys
import time

import openai
import pytest

from tests.e2e.e2e_support import DEADLINE, ROOT, deployment
from tests.e2e.test_readme_flow import section_blocks

pytestmark = pytest.mark.e2e
SECTION = "## OpenAI SDK"
WORDS = ["apple", "river", "stone", "cloud", "tiger", "maple", "piano", "ocean"]
ENDED = ("succeeded", "failed", "cancelled")


def sdk_client(http_client) -> openai.OpenAI:
    """The SDK pointed at the deployment `http_client` talks to, with its project key."""
    key = http_client.headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url=f"{http_client.base_url}/v1", api_key=key, max_retries=0)


def chat_file(client: openai.OpenAI, tmp_path, copies: int = 4):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Shout: {w}"},
                                                     {"role": "assistant", "content": w.upper()}]}) + "\n"
                            for w in WORDS * copies))
    return client.files.create(file=path, purpose="fine-tune")


def wait_until(client: openai.OpenAI, job_id: str, predicate, what: str):
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if predicate(job):
            return job
        time.sleep(0.3)
    pytest.fail(f"job {job_id} never reached {what}: {job}")


def test_the_readme_sdk_section_runs_as_written(request, tmp_path):
    script = "\n".join(section_blocks((ROOT / "README.md").read_text(), SECTION, lang="python"))
    assert "fine_tuning.jobs.create" in script and "stream=True" in script
    checkout = tmp_path / "checkout"
    (checkout / "var").mkdir(parents=True)
    (tmp_path / "flow.py").write_text(script)
    with deployment(request, tmp_path / "service", backend="embedded") as dep:
        (checkout / "var" / "api-key").write_text(dep.client.headers["Authorization"].removeprefix("Bearer "))
        env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "BASE")} | {
            "BASE": f"http://127.0.0.1:{dep.port}", "TMPDIR": str(tmp_path)}
        proc = subprocess.run([sys.executable, str(tmp_path / "flow.py")], cwd=checkout, env=env,
                              capture_output=True, text=True, timeout=4 * DEADLINE)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    out = proc.stdout.splitlines()

    # Each method's job ended succeeded, with a fine-tuned model named after its base, project and suffix.
    ended = [line.split() for line in out if line.startswith("ftjob-")]
    assert [(status, model.split(":")[-2]) for _, status, model in ended] == [
        ("succeeded", "shout"), ("succeeded", "shout-dpo"), ("succeeded", "shout-rft")], out
    sft_model = ended[0][2]
    assert re.fullmatch(r"ft:builtin:tiny-llama:[a-z0-9-]+:shout:ftjob-[0-9a-f]+", sft_model)
    assert all(model.startswith(f"ft:{sft_model}:") for _, _, model in ended[1:])  # trained on from the SFT model

    # The events of the supervised job, oldest first, from its start to its end.
    sft_events = out[:out.index(" ".join(ended[0]))]
    assert "succeeded" in sft_events[-1] and any("running" in line for line in sft_events)

    # Its checkpoints, each named as a model, with a training loss that fell.
    checkpoints = [line.split() for line in out if re.match(r"\d+ ft:", line)]
    assert checkpoints and all(name.startswith(f"{sft_model}:ckpt-step-{step}") for step, name, _ in checkpoints)
    losses = {int(step): float(loss) for step, _, loss in checkpoints}
    assert losses[max(losses)] < 1.0, losses  # from log(256) = 5.5 at the start

    # The same question with the same seed: the streamed text is the plain reply's.
    reply = next(line for line in out if line.startswith("reply: "))
    streamed = next(line for line in out if line.startswith("streamed: "))
    assert reply.split(" ", 1)[1].rsplit(" ", 2)[0] == streamed.split(" ", 1)[1]
    assert int(reply.rsplit(" ", 2)[1]) > 0
    # Greedy decoding of what the supervised job learned: the user's word, shouted.
    assert streamed == "streamed: 'RIVER'", out

    # Each method's fine-tuned model answers, and its streamed answer is the same text.
    answers = {line.split(" ", 1)[0]: tuple(json.loads(line.split(" ", 1)[1]))
               for line in out if line.startswith(("supervised [", "dpo [", "reinforcement ["))}
    assert sorted(answers) == ["dpo", "reinforcement", "supervised"], out
    assert all(plain and plain == streamed for plain, streamed in answers.values()), answers
    assert answers["supervised"] == ("RIVER", "RIVER")

    # The models list holds the three fine-tuned models and the supervised job's checkpoints.
    listed = eval(out[-1])  # noqa: S307 - the script printed a list of strings with print()
    assert {model for _, _, model in ended} <= set(listed)
    assert {name for _, name, _ in checkpoints} <= set(listed)


def test_pause_keeps_a_checkpoint_and_resume_continues_from_it(service, tmp_path):
    client = sdk_client(service)
    training = chat_file(client, tmp_path, copies=16)
    job = client.fine_tuning.jobs.create(
        model="builtin:tiny-llama", training_file=training.id, seed=0,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 4}}})
    native = service.get(f"/v1/jobs/{job.id}").json()
    total = native["total_steps"] or 0
    wait_until(client, job.id, lambda j: service.get(f"/v1/jobs/{j.id}").json()["current_step"] >= 2, "step 2")

    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.id == job.id and paused.status in ("running", "paused")
    paused = wait_until(client, job.id, lambda j: j.status == "paused", "paused")
    (kept,) = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=1))  # newest first
    step_at_pause = service.get(f"/v1/jobs/{job.id}").json()["current_step"]
    assert kept.step_number == step_at_pause >= 2

    assert client.fine_tuning.jobs.resume(job.id).status in ("queued", "validating_files", "running")
    done = wait_until(client, job.id, lambda j: j.status in ENDED, "its end")
    assert done.status == "succeeded" and done.fine_tuned_model
    native = service.get(f"/v1/jobs/{job.id}").json()
    assert native["current_step"] == native["total_steps"] and (total == 0 or native["total_steps"] == total)
    # The resumed run started after the kept checkpoint: one start at step 0, one from the checkpoint.
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(str(step_at_pause) in m and "resum" in m.lower() for m in messages), messages
    metrics = service.get(f"/v1/jobs/{job.id}/metrics", params={"limit": 1000}).json()["data"]
    assert [m["step"] for m in metrics] == list(range(1, native["total_steps"] + 1))


def test_cancel_ends_a_job_and_pagination_walks_jobs_and_events(service, tmp_path):
    client = sdk_client(service)
    training = chat_file(client, tmp_path, copies=16)
    ids = []
    for seed in range(3):
        job = client.fine_tuning.jobs.create(
            model="builtin:tiny-llama", training_file=training.id, seed=seed, metadata={"batch": "pages"},
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 8}}})
        ids.append(job.id)
    for job_id in ids:
        cancelled = client.fine_tuning.jobs.cancel(job_id)
        assert cancelled.id == job_id
    for job_id in ids:
        assert wait_until(client, job_id, lambda j: j.status in ENDED, "its end").status == "cancelled"

    # Jobs, newest first, one per page, filtered by metadata: the SDK follows `after` through them all.
    page = client.fine_tuning.jobs.list(limit=1, metadata={"batch": "pages"})
    assert len(page.data) == 1 and page.has_more
    assert [j.id for j in page] == ids[::-1]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2, metadata={"batch": "pages"}).data] == ids[:0:-1]

    # Events, newest first, two per page, the same as in one page.
    events = client.fine_tuning.jobs.list_events(ids[0], limit=2)
    walked = [e.id for e in events]
    whole = [e.id for e in client.fine_tuning.jobs.list_events(ids[0], limit=100).data]
    assert walked == whole and len(whole) >= 3
    created = [e.created_at for e in client.fine_tuning.jobs.list_events(ids[0], limit=100).data]
    assert created == sorted(created, reverse=True)
    assert "cancelled" in client.fine_tuning.jobs.list_events(ids[0], limit=1).data[0].message


def test_mistakes_raise_the_sdks_exceptions_with_their_param(service, tmp_path):
    client = sdk_client(service)
    training = chat_file(client, tmp_path, copies=1)
    supervised = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}

    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-0123456789abcdef01234567")
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=tmp_path / "chat.jsonl", purpose="assistants")
    assert err.value.param == "purpose"
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as err:
        client.fine_tuning.jobs.create(model="builtin:tiny-llama", training_file="file-missing", method=supervised)
    assert err.value.param == "training_file"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(
            model="builtin:tiny-llama", training_file=training.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epoch": 1}}})
    assert err.value.param == "method.supervised.hyperparameters.n_epoch"
    python_grader = {"type": "python", "name": "mine", "source": "def grade(sample, item):\n    return 1.0\n"}
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(
            model="builtin:tiny-llama", training_file=training.id,
            method={"type": "reinforcement", "reinforcement": {"grader": python_grader}})
    assert err.value.param.startswith("method.reinforcement.grader")
    assert "function" in str(err.value.message)  # points to the reward functions registered on the server
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="ft:nothing:here:x:ftjob-00", messages=[{"role": "user", "content": "hi"}])
    assert err.value.param == "model"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{service.base_url}/v1", api_key="rlhf_wrong", max_retries=0).models.list()
