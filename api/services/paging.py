"""Keyset pagination queries shared by every list endpoint."""

from typing import Any

from sqlalchemy import BigInteger, Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from api.deps import is_id_shaped
from api.errors import InvalidRequest

# A cursor is compared with its column, so it must fit the column on every backend: SQLite would
# accept any 64-bit value where Postgres's INTEGER stops at 32 bits.
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def newest_first_page(session: Session, stmt: Select, model: Any, *, project_id: str, limit: int,
                      after: str | None) -> tuple[list[Any], bool]:
    """A project's page ordered by (created_at, id) descending; `after` is the id of the last item seen."""
    if after is not None:
        anchor = session.get(model, after) if is_id_shaped(after) else None
        if anchor is None or anchor.project_id != project_id:
            raise InvalidRequest(f"cursor {after[:64]!r} names no item of this list", param="after")
        stmt = stmt.where(or_(model.created_at < anchor.created_at,
                              and_(model.created_at == anchor.created_at, model.id < anchor.id)))
    rows = list(session.scalars(stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def integer_cursor(after: str, key: InstrumentedAttribute) -> int:
    """`after` as an integer within the range of the column it is compared with."""
    low, high = INT64 if isinstance(key.type, BigInteger) else INT32
    try:
        value = int(after)
    except ValueError as exc:
        if after.strip().lstrip("+-").isdigit():  # more digits than int() reads: out of range too
            value = high + 1
        else:
            raise InvalidRequest(f"cursor {after[:64]!r} is not an integer", param="after") from exc
    if not low <= value <= high:
        raise InvalidRequest(f"cursor {after[:64]!r}{'…' if len(after) > 64 else ''} is out of range: "
                             f"it must lie in [{low}, {high}]",
                             param="after")
    return value


def ascending_page(session: Session, stmt: Select, key: InstrumentedAttribute, *, limit: int,
                   after: str | None) -> tuple[list[Any], bool]:
    """Page ordered by an integer column ascending; `after` is that column's last value seen."""
    if after is not None:
        stmt = stmt.where(key > integer_cursor(after, key))
    rows = list(session.scalars(stmt.order_by(key).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
