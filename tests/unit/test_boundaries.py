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


def test_worker_task_module_stays_free_of_torch():
    # the training stack loads in the per-job child process, never in the Celery worker itself
    assert "torch" not in imported_after("worker.tasks")
