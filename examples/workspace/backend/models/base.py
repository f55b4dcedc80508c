"""What every entity has: a prefixed id and creation/update times."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import ClassVar

from backend.utils.dates import now
from backend.utils.ids import new_id


@dataclasses.dataclass(kw_only=True)
class Entity:
    id_prefix: ClassVar[str] = "ent"

    id: str = ""
    created_at: dt.datetime = dataclasses.field(default_factory=now)
    updated_at: dt.datetime = dataclasses.field(default_factory=now)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = new_id(self.id_prefix)

    def touch(self) -> None:
        self.updated_at = now()
