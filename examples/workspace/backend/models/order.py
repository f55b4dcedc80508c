"""Orders and their lines. An order's total is the sum of its lines plus tax."""

from __future__ import annotations

import dataclasses
import enum

from backend.core.errors import Conflict
from backend.models.base import Entity
from backend.models.customer import Customer
from backend.models.product import Product
from backend.utils.money import Money, total
from backend.utils.validation import require_positive


class OrderStatus(enum.StrEnum):
    DRAFT = "draft"
    PLACED = "placed"
    PAID = "paid"
    SHIPPED = "shipped"
    CANCELLED = "cancelled"


@dataclasses.dataclass(kw_only=True)
class OrderLine:
    product: Product
    quantity: int

    def __post_init__(self) -> None:
        require_positive(self.quantity, "quantity")

    @property
    def amount(self) -> Money:
        return self.product.price.times(self.quantity)


@dataclasses.dataclass(kw_only=True)
class Order(Entity):
    id_prefix = "ord"

    customer: Customer
    lines: list[OrderLine] = dataclasses.field(default_factory=list)
    status: OrderStatus = OrderStatus.DRAFT
    currency: str = "EUR"

    def add(self, product: Product, quantity: int) -> OrderLine:
        if self.status is not OrderStatus.DRAFT:
            raise Conflict(f"order {self.id} is {self.status}; only drafts change")
        line = OrderLine(product=product, quantity=quantity)
        self.lines.append(line)
        self.touch()
        return line

    def subtotal(self) -> Money:
        return total([line.amount for line in self.lines], self.currency)

    def move(self, status: OrderStatus) -> None:
        allowed = {
            OrderStatus.DRAFT: {OrderStatus.PLACED, OrderStatus.CANCELLED},
            OrderStatus.PLACED: {OrderStatus.PAID, OrderStatus.CANCELLED},
            OrderStatus.PAID: {OrderStatus.SHIPPED},
        }
        if status not in allowed.get(self.status, set()):
            raise Conflict(f"order {self.id} cannot go from {self.status} to {status}")
        self.status = status
        self.touch()
