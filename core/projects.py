"""Projects and their API keys (creation, authentication, revocation, the embedded-mode bootstrap), and the
checkpoints a project may name."""

import hashlib
import hmac
import secrets
import threading
import time

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from core.models import ApiKey, Checkpoint, Job, Project, utcnow

KEY_PREFIX = "rlhf_"
# A live key's project is remembered this long per process, so repeated requests cost no query.
# Revoking through this process forgets it at once; a revocation made elsewhere (another API process,
# the database) takes effect within this many seconds. Unknown and revoked keys are never remembered.
AUTH_CACHE_SECONDS = 2.0
AUTH_CACHE_ENTRIES = 10_000
_clock = time.monotonic
_known: dict[str, tuple[float, Project]] = {}  # key hash -> (remembered until, detached project)
_known_lock = threading.Lock()


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
    if (project := remembered(plaintext)) is not None:
        return project
    digest, now = hash_key(plaintext), _clock()
    row = session.execute(select(Project, ApiKey.revoked_at).join(ApiKey, ApiKey.project_id == Project.id)
                          .where(ApiKey.key_hash == digest)).first()
    if row is None or row.revoked_at is not None:
        _forget(digest)
        return None
    project = row[0]
    # Detached, with its columns loaded: shared read-only by the requests of the next seconds.
    session.expunge(project)
    with _known_lock:
        if len(_known) >= AUTH_CACHE_ENTRIES:
            _known.clear()
        _known[digest] = now + AUTH_CACHE_SECONDS, project
    return project


def remembered(plaintext: str) -> Project | None:
    """The project of a key that authenticated in the last AUTH_CACHE_SECONDS (no query), or None."""
    known = _known.get(hash_key(plaintext))
    return known[1] if known is not None and known[0] > _clock() else None


def _forget(digest: str) -> None:
    with _known_lock:
        _known.pop(digest, None)


def is_admin(plaintext: str, admin_key: str | None) -> bool:
    return admin_key is not None and hmac.compare_digest(plaintext.encode(), admin_key.encode())


def revoke_key(session: Session, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    digest = key.key_hash
    _forget(digest)
    # Again once committed: a request that read the key before the commit may have remembered it.
    event.listen(session, "after_commit", lambda _session: _forget(digest), once=True)


def project_checkpoint(session: Session, project_id: str, checkpoint_id: str) -> Checkpoint | None:
    """The checkpoint of a job of this project, or None (also when it belongs to another project)."""
    return session.scalar(select(Checkpoint).join(Job, Job.id == Checkpoint.job_id)
                          .where(Checkpoint.id == checkpoint_id, Job.project_id == project_id))


def bootstrap_local_key(session: Session) -> str | None:
    """On a database without projects, create a "default" project and a key; return the key."""
    if session.scalar(select(Project.id).limit(1)) is not None:
        return None
    project = create_project(session, "default")
    _, plaintext = create_key(session, project.id, name="local")
    return plaintext
