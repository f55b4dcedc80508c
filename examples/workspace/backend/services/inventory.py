"""Stock keeping: receiving goods, reserving for orders, low-stock alerts."""

from __future__ import annotations

from backend.core.config import Settings
from backend.core.events import bus
from backend.models.inventory import StockLevel
from backend.models.product import Product
from backend.services.catalog import CatalogService


class InventoryService:
    def __init__(self, catalog: CatalogService, settings: Settings) -> None:
        self.catalog = catalog
        self.settings = settings
        self.levels: dict[str, StockLevel] = {}

    def level(self, product: Product) -> StockLevel:
        return self.levels.setdefault(product.id, StockLevel(product=product))

    def receive(self, product_id: str, quantity: int) -> StockLevel:
        level = self.level(self.catalog.products.get(product_id))
        level.on_hand += quantity
        return level

    def reserve(self, product: Product, quantity: int) -> None:
        level = self.level(product)
        level.reserve(quantity)
        if level.available <= self.settings.low_stock_threshold:
            bus.publish("stock.low", product_id=product.id, available=level.available)
