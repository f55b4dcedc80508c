"""The error hierarchy. API handlers turn these into HTTP statuses; nothing else does."""

from __future__ import annotations


class ShopfrontError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "field": self.field}


class ValidationFailed(ShopfrontError):
    status = 400
    code = "validation_failed"


class NotFound(ShopfrontError):
    status = 404
    code = "not_found"


class Conflict(ShopfrontError):
    status = 409
    code = "conflict"


class OutOfStock(Conflict):
    code = "out_of_stock"


class PaymentDeclined(ShopfrontError):
    status = 402
    code = "payment_declined"
