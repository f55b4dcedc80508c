"""Stock levels per product; reservations hold stock for placed, unshipped orders."""

from __future__ import annotations

import dataclasses

from backend.core.errors import OutOfStock
from backend.models.product import Product


@dataclasses.dataclass(kw_only=True)
class StockLevel:
    product: Product
    on_hand: int = 0
    reserved: int = 0

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    def reserve(self, quantity: int) -> None:
        if quantity > self.available:
            raise OutOfStock(
                f"{self.product.sku}: {quantity} wanted, {self.available} available",
                field="quantity",
            )
        self.reserved += quantity

    def release(self, quantity: int) -> None:
        self.reserved = max(0, self.reserved - quantity)
