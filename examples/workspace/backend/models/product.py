"""Products of the catalogue, priced in minor units."""

from __future__ import annotations

import dataclasses

from backend.models.base import Entity
from backend.utils.money import Money
from backend.utils.text import slugify
from backend.utils.validation import require_text


@dataclasses.dataclass(kw_only=True)
class Product(Entity):
    id_prefix = "prd"

    sku: str
    title: str
    price: Money
    active: bool = True
    slug: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sku = require_text(self.sku, "sku", max_length=32).upper()
        self.title = require_text(self.title, "title")
        self.slug = self.slug or slugify(self.title)
