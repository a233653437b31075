"""Projects and their API keys, as the admin endpoints manage them."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import ApiKey, Project
from core.projects import create_key, create_project, revoke_key


def create(*, session: Session, name: str) -> Project:
    """Create a project."""
    project = create_project(session, name)
    session.commit()
    return project


def list_all(*, session: Session) -> list[Project]:
    """Every project, oldest first."""
    return list(session.scalars(select(Project).order_by(Project.created_at)))


def add_key(*, session: Session, project: Project, name: str) -> tuple[ApiKey, str]:
    """A new key of `project` and its plaintext, which is never stored."""
    key, plaintext = create_key(session, project.id, name)
    session.commit()
    return key, plaintext


def keys_of(*, session: Session, project: Project) -> list[ApiKey]:
    """A project's keys, oldest first (revoked ones too)."""
    return list(session.scalars(select(ApiKey).where(ApiKey.project_id == project.id).order_by(ApiKey.created_at)))


def revoke(*, session: Session, key: ApiKey) -> ApiKey:
    """Revoke `key` (a revoked key keeps its first revocation time); requests with it then answer 401."""
    revoke_key(session, key)
    session.commit()
    return key
