"""Keyset pagination queries shared by every list endpoint."""

from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from api.errors import InvalidRequest


def newest_first_page(session: Session, stmt: Select, model: Any, *, project_id: str, limit: int,
                      after: str | None) -> tuple[list[Any], bool]:
    """A project's page ordered by (created_at, id) descending; `after` is the id of the last item seen."""
    if after is not None:
        anchor = session.get(model, after)
        if anchor is None or anchor.project_id != project_id:
            raise InvalidRequest(f"cursor {after!r} names no item of this list", param="after")
        stmt = stmt.where(or_(model.created_at < anchor.created_at,
                              and_(model.created_at == anchor.created_at, model.id < anchor.id)))
    rows = list(session.scalars(stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def ascending_page(session: Session, stmt: Select, key: InstrumentedAttribute, *, limit: int,
                   after: str | None) -> tuple[list[Any], bool]:
    """Page ordered by an integer column ascending; `after` is that column's last value seen."""
    if after is not None:
        try:
            stmt = stmt.where(key > int(after))
        except ValueError as exc:
            raise InvalidRequest(f"cursor {after!r} is not an integer", param="after") from exc
    rows = list(session.scalars(stmt.order_by(key).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
