"""Helpers of the /v1/models and /v1/chat tests: saved models, and jobs with checkpoints made in the database."""

import json
import shutil
from pathlib import Path

from core.artifacts import open_store
from core.db import session_scope
from core.models import Checkpoint, Job, JobStatus, utcnow
from tests.support import jsonl, preference_rows, upload


def save_models(root: Path) -> dict[str, Path]:
    """builtin:tiny-llama saved as a causal LM (`lm`) and as a reward model (`rm`), as checkpoints hold them."""
    from trainers.models.checkpoint import write_model_info
    from trainers.models.loading import load_policy
    from trainers.models.reward import load_reward_model

    dirs = {"lm": root / "lm", "rm": root / "rm"}
    for (name, directory), load in zip(dirs.items(), (load_policy, load_reward_model), strict=True):
        model, tokenizer = load("builtin:tiny-llama")
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        kind = "causal_lm" if name == "lm" else "reward_model"
        write_model_info(directory, {"kind": kind, "adapter": False, "base_model": "builtin:tiny-llama"})
    return dirs


def job_with_checkpoints(client, settings, model_dir: Path, *, job_type: str = "dpo", steps=(1, 2),
                         status: JobStatus = JobStatus.succeeded, suffix: str | None = None) -> str:
    """A job of the client's project whose checkpoints at `steps` hold the model in `model_dir`; its status set."""
    dataset = upload(client, jsonl(preference_rows(4))).json()["id"]
    r = client.post("/v1/jobs", json={"type": job_type, "base_model": "builtin:tiny-llama", "dataset_id": dataset})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    store = open_store(settings)
    info = json.loads((model_dir / "rlhf_service.json").read_text())
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        job.status, job.suffix = status, suffix
        job.finished_at = utcnow() if status == JobStatus.succeeded else None
        for step in steps:
            staging = store.staging_dir()
            shutil.copytree(model_dir, staging / "model")
            store.commit(staging, f"{job_id}/step-{step}")
            session.add(Checkpoint(job_id=job_id, step=step, artifact_key=f"{job_id}/step-{step}", size_bytes=1,
                                   sha256="0" * 64, metrics={}, model_info=info,
                                   is_final=step == max(steps)))  # fmt: skip
    return job_id
