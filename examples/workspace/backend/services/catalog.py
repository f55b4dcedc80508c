"""The product catalogue: adding, pricing and retiring products."""

from __future__ import annotations

from backend.core.errors import Conflict
from backend.core.events import bus
from backend.models.product import Product
from backend.repositories.memory import Repository
from backend.utils.money import Money


class CatalogService:
    def __init__(self, repository: Repository[Product] | None = None) -> None:
        self.products = repository or Repository[Product]("product")

    def add(self, *, sku: str, title: str, price_cents: int, currency: str = "EUR") -> Product:
        product = Product(sku=sku, title=title, price=Money(price_cents, currency))
        if self.products.filter(lambda p: p.sku == product.sku):
            raise Conflict(f"SKU {product.sku} exists", field="sku")
        bus.publish("product.added", product_id=product.id, sku=product.sku)
        return self.products.add(product)

    def reprice(self, product_id: str, price_cents: int) -> Product:
        product = self.products.get(product_id)
        product.price = Money(price_cents, product.price.currency)
        product.touch()
        bus.publish("product.repriced", product_id=product.id, price_cents=price_cents)
        return product

    def retire(self, product_id: str) -> Product:
        product = self.products.get(product_id)
        product.active = False
        product.touch()
        return product

    def active(self) -> list[Product]:
        return self.products.filter(lambda p: p.active)
