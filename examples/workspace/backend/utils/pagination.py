"""Pages of results: offset/limit with a cap, and the metadata the API returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Generic, TypeVar

from backend.core.errors import ValidationFailed

T = TypeVar("T")
MAX_PAGE_SIZE = 100


@dataclasses.dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    number: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def has_next(self) -> bool:
        return self.number < self.pages


def paginate(items: Sequence[T], number: int = 1, size: int = 25) -> Page[T]:
    if number < 1:
        raise ValidationFailed("page numbers start at 1", field="page")
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise ValidationFailed(f"page size is 1 to {MAX_PAGE_SIZE}", field="page_size")
    start = (number - 1) * size
    return Page(list(items[start : start + size]), number, size, len(items))
