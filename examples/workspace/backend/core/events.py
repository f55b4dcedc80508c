"""An in-process event bus: services publish facts, subscribers react (emails, metrics)."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

from backend.core.errors import ShopfrontError

Handler = Callable[["Event"], None]


@dataclasses.dataclass(frozen=True)
class Event:
    name: str
    payload: dict[str, Any]


class EventBus:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = collections.defaultdict(list)
        self.published: list[Event] = []

    def subscribe(self, name: str, handler: Handler) -> None:
        self._handlers[name].append(handler)

    def publish(self, name: str, **payload: Any) -> Event:
        if not name or "." not in name:
            raise ShopfrontError(f"event names look like 'order.placed', not {name!r}")
        event = Event(name, payload)
        self.published.append(event)
        for handler in self._handlers.get(name, []):
            handler(event)
        return event


bus = EventBus()
