"""Projects and their API keys: creation, authentication, revocation, and the embedded-mode bootstrap."""

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import ApiKey, Project, utcnow

KEY_PREFIX = "rlhf_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_project(session: Session, name: str) -> Project:
    project = Project(name=name)
    session.add(project)
    session.flush()
    return project


def create_key(session: Session, project_id: str, name: str = "default") -> tuple[ApiKey, str]:
    """A new key for the project; the plaintext is returned once and never stored."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(30)
    key = ApiKey(project_id=project_id, name=name, prefix=plaintext[:12], key_hash=hash_key(plaintext))
    session.add(key)
    session.flush()
    return key, plaintext


def authenticate(session: Session, plaintext: str) -> Project | None:
    """The project of a live key, or None for an unknown or revoked one."""
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext)))
    if key is None or key.revoked_at is not None:
        return None
    return session.get(Project, key.project_id)


def is_admin(plaintext: str, admin_key: str | None) -> bool:
    return admin_key is not None and hmac.compare_digest(plaintext.encode(), admin_key.encode())


def revoke_key(session: Session, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = utcnow()


def bootstrap_local_key(session: Session) -> str | None:
    """On a database without projects, create a "default" project and a key; return the key."""
    if session.scalar(select(Project.id).limit(1)) is not None:
        return None
    project = create_project(session, "default")
    _, plaintext = create_key(session, project.id, name="local")
    return plaintext
