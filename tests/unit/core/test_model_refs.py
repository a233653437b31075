"""base_model references: builtins, checkpoints, the models root, hub ids, and escapes refused."""

import pytest

from core.db import session_scope
from core.model_refs import ModelRefError, resolve_model_ref
from tests.support import embedded_settings
from tests.unit.core.rows import add_checkpoint


@pytest.fixture
def settings(tmp_path):
    s = embedded_settings(tmp_path)
    (s.models_dir / "team" / "llama").mkdir(parents=True)
    return s


def resolve(ref, settings, project_id="proj_1"):
    with session_scope(settings.database_url) as session:
        return resolve_model_ref(ref, settings=settings, session=session, project_id=project_id).location


def test_builtin_hub_and_local(settings):
    assert resolve("builtin:tiny-llama", settings) == "builtin:tiny-llama"
    assert resolve("Qwen/Qwen2-0.5B", settings) == "Qwen/Qwen2-0.5B"
    assert resolve("team/llama", settings) == str((settings.models_dir / "team" / "llama").resolve())


def test_checkpoint(settings):
    with session_scope(settings.database_url) as session:
        add_checkpoint(session)
    location = resolve("checkpoint:ckpt_1", settings)
    assert location == str(settings.artifacts_dir.resolve() / "jobs/job_1/checkpoint-3/model")
    with pytest.raises(ModelRefError, match="ckpt_2"):
        resolve("checkpoint:ckpt_2", settings)
    with pytest.raises(ModelRefError, match="ckpt_1"):  # another project's checkpoint does not exist for it
        resolve("checkpoint:ckpt_1", settings, project_id="proj_2")


@pytest.mark.parametrize("ref", ["../x", "team/../../etc", "/etc", "~/models", " "])
def test_paths_outside_the_root_are_refused(settings, ref):
    with pytest.raises(ModelRefError):
        resolve(ref, settings)


def test_symlink_escape_is_refused(settings, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (settings.models_dir / "sneaky").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ModelRefError, match="outside"):
        resolve("sneaky", settings)
