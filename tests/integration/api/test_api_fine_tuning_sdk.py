"""The official `openai` SDK on /v1/fine_tuning/jobs, on both backends: its types read our objects, its
paginators follow our cursors, its query encoding of metadata filters works, and its exceptions carry
our `param`. The SDK talks to the app through the test client's transport (nothing trains here; the
live flow is tests/e2e)."""

import openai
import pytest
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent

from core.artifacts import ArtifactStore
from core.db import session_scope
from core.lifecycle import claim_job, transition
from core.models import JobStatus
from tests.integration.api.test_api_fine_tuning import CHAT, GRADER, PAIRS, PROMPTS
from tests.support import jsonl, upload
from worker.reporting import JobReporter


@pytest.fixture
def sdk(client) -> openai.OpenAI:
    key = client.headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url=f"{client.base_url}/v1", api_key=key, http_client=client, max_retries=0)


def test_the_sdk_creates_reads_and_lists_each_method(sdk, client):
    chat = upload(client, jsonl(CHAT), kind="chat").json()["id"]
    pairs = upload(client, jsonl(PAIRS), kind="preference").json()["id"]
    prompts = upload(client, jsonl(PROMPTS), kind="prompt").json()["id"]
    sft = sdk.fine_tuning.jobs.create(model="builtin:tiny-llama", training_file=chat, suffix="shout", seed=1,
                                      metadata={"run": "sdk"},
                                      method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}})
    assert isinstance(sft, FineTuningJob)
    assert sft.id.startswith("ftjob-") and sft.status == "queued" and sft.method.type == "supervised"
    assert sft.method.supervised.hyperparameters.n_epochs == 2 and sft.hyperparameters.batch_size == 8
    dpo = sdk.fine_tuning.jobs.create(model="builtin:tiny-llama", training_file=pairs, metadata={"run": "sdk"},
                                      method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}})
    assert dpo.method.dpo.hyperparameters.beta == 0.2 and dpo.method.dpo.hyperparameters.n_epochs == 1
    rft = sdk.fine_tuning.jobs.create(
        model="builtin:tiny-llama", training_file=prompts, validation_file=prompts,
        method={"type": "reinforcement", "reinforcement": {"grader": GRADER,
                                                           "hyperparameters": {"compute_multiplier": 2}}})
    assert rft.method.reinforcement.hyperparameters.compute_multiplier == 2.0
    assert rft.method.reinforcement.hyperparameters.eval_interval == 100 and rft.validation_file == prompts

    assert sdk.fine_tuning.jobs.retrieve(sft.id).suffix == "shout"
    # The SDK sends metadata[run]=sdk and follows `after` one job at a time.
    assert [job.id for job in sdk.fine_tuning.jobs.list(limit=1, metadata={"run": "sdk"})] == [dpo.id, sft.id]
    assert [job.id for job in sdk.fine_tuning.jobs.list()] == [rft.id, dpo.id, sft.id]


def test_the_sdk_walks_events_and_checkpoints_newest_first(sdk, client, settings):
    chat = upload(client, jsonl(CHAT), kind="chat").json()["id"]
    job = sdk.fine_tuning.jobs.create(model="builtin:tiny-llama", training_file=chat)
    with session_scope(settings.database_url) as session:
        lease = claim_job(session, job.id, "w1")
    reporter = JobReporter(url=settings.database_url, lease=lease, store=ArtifactStore(settings.artifacts_dir))
    reporter.on_start(4)
    for step in range(1, 5):
        reporter.on_metrics(step, {"train/loss": 1.0 / step, "train/num_tokens": 10.0 * step})
        reporter.on_checkpoint(step, lambda d: (d / "model").mkdir(), {"metrics": {"train/loss": 1.0 / step}})
    with session_scope(settings.database_url) as session:
        transition(session, job.id, JobStatus.succeeded)

    events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=3))  # several pages
    assert [e.id for e in events] == [e.id for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert all(isinstance(e, FineTuningJobEvent) for e in events)
    assert [e.data["step"] for e in events if e.type == "metrics"] == [4, 3, 2, 1]
    assert "succeeded" in events[0].message

    checkpoints = list(sdk.fine_tuning.jobs.checkpoints.list(job.id, limit=1))
    assert [c.step_number for c in checkpoints] == [4, 3, 2, 1]
    assert checkpoints[0].metrics.train_loss == 0.25 and checkpoints[0].metrics.valid_loss is None
    done = sdk.fine_tuning.jobs.retrieve(job.id)
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-4"
    assert done.trained_tokens == 40 and done.finished_at >= done.created_at


def test_the_sdk_cancels_pauses_resumes_and_raises_with_param(sdk, client):
    chat = upload(client, jsonl(CHAT), kind="chat").json()["id"]
    job = sdk.fine_tuning.jobs.create(model="builtin:tiny-llama", training_file=chat)
    assert sdk.fine_tuning.jobs.pause(job.id).status == "paused"
    assert sdk.fine_tuning.jobs.resume(job.id).status == "queued"
    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        sdk.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.retrieve("ftjob-0123456789abcdef01234567")
    with pytest.raises(openai.BadRequestError) as err:
        sdk.fine_tuning.jobs.create(model="builtin:tiny-llama", training_file=chat,
                                    method={"type": "dpo", "dpo": {"hyperparameters": {"beta": -1}}})
    assert err.value.param == "method.dpo.hyperparameters.beta"
    with pytest.raises(openai.BadRequestError) as err:
        sdk.fine_tuning.jobs.create(model="builtin:tiny-llama", training_file="file-missing")
    assert err.value.param == "training_file"
    with pytest.raises(openai.BadRequestError) as err:
        sdk.fine_tuning.jobs.create(model="builtin:tiny-llama", training_file=chat,
                                    integrations=[{"type": "wandb", "wandb": {"project": "mine"}}])
    assert err.value.param == "integrations"
