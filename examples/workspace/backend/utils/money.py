"""Money as integer minor units with a currency; arithmetic refuses mixed currencies."""

from __future__ import annotations

import dataclasses
from decimal import ROUND_HALF_EVEN, Decimal


@dataclasses.dataclass(frozen=True, order=True)
class Money:
    cents: int
    currency: str = "EUR"

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.cents + other.cents, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.cents - other.cents, self.currency)

    def times(self, quantity: int) -> Money:
        return Money(self.cents * quantity, self.currency)

    def percent(self, rate: int) -> Money:
        """`rate` percent of this amount, rounded half to even (banker's rounding)."""
        exact = Decimal(self.cents) * Decimal(rate) / Decimal(100)
        return Money(int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN)), self.currency)

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"cannot mix {self.currency} and {other.currency}")

    def __str__(self) -> str:
        sign = "-" if self.cents < 0 else ""
        whole, cents = divmod(abs(self.cents), 100)
        return f"{sign}{whole}.{cents:02d} {self.currency}"


def zero(currency: str = "EUR") -> Money:
    return Money(0, currency)


def total(amounts: list[Money], currency: str = "EUR") -> Money:
    result = zero(currency)
    for amount in amounts:
        result = result + amount
    return result
