"""`trainers.spec` stays torch-free and service-free, and no trainers module reaches into the service stack."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

SERVICE_PACKAGES = {"fastapi", "sqlalchemy", "celery", "starlette", "kombu", "redis"}


def module_names(folder: Path) -> list[str]:
    """Every module of the package at `folder`, sub-packages included, as dotted names."""
    names = []
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


LIGHT_MODULES = ["trainers", *module_names(ROOT / "trainers" / "spec")]


def imported_after(*modules: str) -> set[str]:
    code = "import sys, json\n" + "".join(f"import {m}\n" for m in modules)
    code += "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_modules_import_neither_torch_nor_the_service(module):
    mods = imported_after(module)
    assert "torch" not in mods
    assert "transformers" not in mods
    assert not SERVICE_PACKAGES & mods
    assert not {"api", "core", "worker"} & mods


def test_every_spec_module_is_checked():
    assert {"trainers.spec.config", "trainers.spec.graders", "trainers.spec.rewards"} <= set(LIGHT_MODULES)


def test_no_trainers_module_imports_the_service_stack():
    modules = module_names(ROOT / "trainers")
    assert {"trainers.dpo", "trainers.rl.rollout", "trainers.models.loading"} <= set(modules)
    mods = imported_after(*modules)
    assert not SERVICE_PACKAGES & mods
    assert not {"api", "core", "worker"} & mods
