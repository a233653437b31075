"""Cursor pagination parameters: `?limit=&after=`; lists answer `{"data": [...], "has_more": bool}`."""

from typing import Annotated

from fastapi import Query
from pydantic import BaseModel


class PageParams(BaseModel):
    limit: int = 20
    after: str | None = None


def page_params(
    limit: Annotated[int, Query(ge=1, le=1000, description="Items per page.")] = 20,
    after: Annotated[str | None, Query(description="Cursor: the last item of the previous page.")] = None,
) -> PageParams:
    return PageParams(limit=limit, after=after)
