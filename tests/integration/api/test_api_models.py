"""/v1/models: base models of the server, the project's fine-tuned models and checkpoints; retrieve and delete."""

import json

import pytest

from core.models import JobStatus
from tests.integration.api.chat_support import job_with_checkpoints, save_models
from tests.support import new_project_key


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return save_models(tmp_path_factory.mktemp("models"))


def ids(client) -> list[str]:
    r = client.get("/v1/models")
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "list"
    return [m["id"] for m in r.json()["data"]]


def test_base_models_are_the_builtins_and_model_directories_under_the_models_root(client, settings):
    (settings.models_dir / "org" / "chat-model").mkdir(parents=True)
    (settings.models_dir / "org" / "chat-model" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (settings.models_dir / "notes").mkdir()  # no model files: not a model
    (settings.models_dir / "adapter").mkdir()
    (settings.models_dir / "adapter" / "adapter_config.json").write_text("{}")

    listed = client.get("/v1/models").json()["data"]
    by_id = {m["id"]: m for m in listed}
    assert by_id["builtin:tiny-llama"] == {"id": "builtin:tiny-llama", "object": "model", "created": 0,
                                           "owned_by": "system"}  # fmt: skip
    assert {"org/chat-model", "adapter"} <= set(by_id) and "notes" not in by_id and "org" not in by_id
    assert by_id["org/chat-model"]["owned_by"] == "system" and by_id["org/chat-model"]["created"] > 0

    assert client.get("/v1/models/builtin:tiny-llama").json() == by_id["builtin:tiny-llama"]
    assert client.get("/v1/models/org/chat-model").json() == by_id["org/chat-model"]
    for missing in ("builtin:nothing", "notes", "org/none", "no-such-org/no-such-model", "checkpoint:ckpt_0"):
        r = client.get(f"/v1/models/{missing}")
        assert r.status_code == 404, (missing, r.text)
        assert r.json()["error"]["param"] == "model"


def test_fine_tuned_models_and_checkpoints_are_listed_retrieved_and_deleted(client, settings, model_dirs,
                                                                            app_client_factory):
    done = job_with_checkpoints(client, settings, model_dirs["lm"], suffix="demo")
    running = job_with_checkpoints(client, settings, model_dirs["lm"], steps=(3,), status=JobStatus.running)
    reward = job_with_checkpoints(client, settings, model_dirs["rm"], job_type="reward_model", steps=(1,))
    model = f"ft:builtin:tiny-llama:test:demo:{done}"
    ckpt = f"{model}:ckpt-step-1"
    running_ckpt = f"ft:builtin:tiny-llama:test::{running}:ckpt-step-3"

    listed = ids(client)
    assert listed[0] == "builtin:tiny-llama"
    assert listed[-4:] == [model, ckpt, f"{model}:ckpt-step-2", running_ckpt]  # jobs oldest first
    assert f"ft:builtin:tiny-llama:test::{running}" not in listed  # not trained yet
    assert not any(reward in m for m in listed)  # reward models complete no chats
    got = client.get(f"/v1/models/{model}").json()
    assert (got["id"], got["object"], got["owned_by"]) == (model, "model", "test") and got["created"] > 0
    assert client.get(f"/v1/models/{running_ckpt}").status_code == 200
    for wrong in (f"ft:builtin:tiny-llama:test:other:{done}",  # not what the job is called
                  f"ft:builtin:tiny-llama:test::{running}", f"{model}:ckpt-step-9",
                  f"ft:builtin:tiny-llama:test::{reward}"):  # fmt: skip
        assert client.get(f"/v1/models/{wrong}").status_code == 404, wrong

    other = app_client_factory(new_project_key(settings, name="test"))  # same slug, another project
    assert other.get(f"/v1/models/{model}").status_code == 404
    assert other.delete(f"/v1/models/{model}").status_code == 404
    assert model not in ids(other)

    for undeletable in ("builtin:tiny-llama", ckpt):
        r = client.delete(f"/v1/models/{undeletable}")
        assert r.status_code == 403, r.text
        assert r.json()["error"]["param"] == "model"
    assert client.delete("/v1/models/builtin:nothing").status_code == 404

    r = client.delete(f"/v1/models/{model}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": model, "object": "model", "deleted": True}
    assert not any(done in m for m in ids(client))  # the model and its checkpoints
    assert running_ckpt in ids(client)
    for gone in (model, ckpt):
        assert client.get(f"/v1/models/{gone}").status_code == 404
    assert client.delete(f"/v1/models/{model}").status_code == 404
