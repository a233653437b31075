"""The light modules stay torch-free, and no trainers module reaches into the service stack."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

LIGHT_MODULES = ["trainers", "trainers.config", "trainers.callbacks", "trainers.errors", "trainers.run_types"]
SERVICE_PACKAGES = {"fastapi", "sqlalchemy", "celery", "starlette", "kombu", "redis"}


def imported_after(*modules: str) -> set[str]:
    code = "import sys, json\n" + "".join(f"import {m}\n" for m in modules)
    code += "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_modules_do_not_import_torch(module):
    mods = imported_after(module)
    assert "torch" not in mods
    assert "transformers" not in mods


def test_no_trainers_module_imports_the_service_stack():
    modules = [f"trainers.{p.stem}" for p in sorted((ROOT / "trainers").glob("*.py")) if p.stem != "__init__"]
    assert "trainers.dpo" in modules
    mods = imported_after(*modules)
    assert not SERVICE_PACKAGES & mods
    assert not {"api", "core", "worker"} & mods
