"""An in-memory repository keyed by entity id, with filtering and pagination."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from backend.core.errors import NotFound
from backend.models.base import Entity
from backend.utils.pagination import Page, paginate

E = TypeVar("E", bound=Entity)


class Repository(Generic[E]):
    def __init__(self, label: str) -> None:
        self.label = label
        self._rows: dict[str, E] = {}

    def add(self, entity: E) -> E:
        self._rows[entity.id] = entity
        return entity

    def get(self, identifier: str) -> E:
        try:
            return self._rows[identifier]
        except KeyError:
            raise NotFound(f"no {self.label} {identifier}") from None

    def remove(self, identifier: str) -> None:
        self.get(identifier)
        del self._rows[identifier]

    def filter(self, predicate: Callable[[E], bool]) -> list[E]:
        return sorted((e for e in self._rows.values() if predicate(e)), key=lambda e: e.created_at)

    def page(self, number: int = 1, size: int = 25) -> Page[E]:
        return paginate(self.filter(lambda _e: True), number, size)

    def __iter__(self) -> Iterator[E]:
        return iter(list(self._rows.values()))

    def __len__(self) -> int:
        return len(self._rows)
