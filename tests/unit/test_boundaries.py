"""The dependency direction of DESIGN.md §1, checked on what each package really imports."""

import json
import subprocess
import sys

import pytest


def imported_after(module: str) -> set[str]:
    code = f"import sys, json; import {module}; print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", ["api.main", "api.routes.jobs", "api.services.jobs"])
def test_api_imports_neither_torch_nor_the_worker(module):
    mods = imported_after(module)
    assert "torch" not in mods and "transformers" not in mods
    assert "worker" not in mods


@pytest.mark.parametrize("module", ["core.models", "core.lifecycle", "core.queue", "core.cli",
                                    "core.migrate", "core.model_refs"])
def test_core_imports_neither_api_nor_worker_nor_torch(module):
    mods = imported_after(module)
    assert not {"api", "worker", "torch", "fastapi"} & mods


def test_the_client_imports_only_what_the_api_request_models_need():
    # Every command but `jobs create` starts without the service's stack; `jobs create` adds only what
    # api.schemas imports (its models are the flags), never torch, the worker or the database code of core.
    cli = imported_after("client.cli")
    assert not {"torch", "transformers", "sqlalchemy", "celery", "fastapi", "api", "trainers", "core"} & cli
    create = imported_after("client.job_create")
    assert create - cli <= imported_after("api.schemas")
    assert not {"torch", "transformers", "celery", "core", "worker"} & create


def test_worker_task_module_stays_free_of_torch():
    # the training stack loads in the per-job child process, never in the Celery worker itself
    assert "torch" not in imported_after("worker.tasks")
