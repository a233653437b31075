"""What a project may name of its own: its jobs' checkpoints, never another project's."""

from core.db import session_scope
from core.models import Project
from core.projects import project_checkpoint
from tests.support import embedded_settings
from tests.unit.core.rows import add_checkpoint


def test_project_checkpoint_is_found_only_in_its_own_project(tmp_path):
    settings = embedded_settings(tmp_path)
    with session_scope(settings.database_url) as session:
        add_checkpoint(session, project_id="proj_1", job_id="job_1", checkpoint_id="ckpt_1", step=3)
        session.add(Project(id="proj_2", name="two"))
    with session_scope(settings.database_url) as session:
        found = project_checkpoint(session, "proj_1", "ckpt_1")
        assert (found.id, found.job_id, found.step) == ("ckpt_1", "job_1", 3)
        assert project_checkpoint(session, "proj_2", "ckpt_1") is None  # another project's
        assert project_checkpoint(session, "proj_1", "ckpt_2") is None  # no such checkpoint
        assert project_checkpoint(session, "proj_1", "job_1") is None  # a job's id is no checkpoint's
