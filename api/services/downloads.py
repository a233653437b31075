"""Checkpoint download links: a short-lived token that stands in for the API key on one checkpoint's archive.

A browser's `<a href>` cannot send `Authorization`, and reading a multi-GB archive into a page's memory
to save it is wrong. So an authenticated request makes a link, and a plain GET of the link streams the
archive exactly as GET /v1/checkpoints/{id}/download does. The token is 32 random bytes, shown once;
only its sha256 is stored. It serves any number of GETs until it expires (a browser may retry a
download, a download manager may fetch it twice), and no longer: expired rows are deleted whenever a
link is made or an expired one is used.
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from api.errors import NotFound
from core.models import Checkpoint, DownloadToken, utcnow
from core.projects import project_checkpoint
from core.settings import Settings

TOKEN_BYTES = 32


@dataclass(frozen=True)
class DownloadLink:
    token: str  # the only copy: the database keeps its sha256
    checkpoint_id: str
    merged: bool
    expires_at: datetime


def token_hash(token: str) -> str:
    # surrogatepass: a path may carry any text, and an unpaired surrogate simply names no token.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_link(*, session: Session, settings: Settings, project_id: str, checkpoint: Checkpoint,
                merged: bool) -> DownloadLink:
    """A new link to `checkpoint`'s archive (base and adapter merged when `merged`), valid for
    DOWNLOAD_LINK_SECONDS; expired links of every project are deleted on the way."""
    now = utcnow()
    session.execute(delete(DownloadToken).where(DownloadToken.expires_at <= now))
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires_at = now + timedelta(seconds=settings.download_link_seconds)
    session.add(DownloadToken(token_hash=token_hash(token), project_id=project_id, checkpoint_id=checkpoint.id,
                              merged=merged, expires_at=expires_at, created_at=now))
    session.commit()
    return DownloadLink(token, checkpoint.id, merged, expires_at)


def redeem(*, session: Session, token: str) -> tuple[Checkpoint, bool]:
    """The checkpoint a live link stands for and whether it asks for the merged model; 404 for a token
    that is unknown or expired (an expired one is deleted), or whose checkpoint is gone."""
    digest = token_hash(token)
    row = session.get(DownloadToken, digest)
    if row is not None and row.expires_at <= utcnow():
        # A statement, not session.delete: two requests may find the same expired row.
        session.execute(delete(DownloadToken).where(DownloadToken.token_hash == digest))
        session.commit()
        row = None
    # The checkpoint is looked up within the link's project again: it may have been deleted since.
    checkpoint = project_checkpoint(session, row.project_id, row.checkpoint_id) if row is not None else None
    if row is None or checkpoint is None:
        raise NotFound("this download link is unknown or has expired: "
                       "make a new one with POST /v1/checkpoints/{checkpoint_id}/download_link", param="token")
    return checkpoint, row.merged
