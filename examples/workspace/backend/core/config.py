"""Settings read once from the environment, with defaults that suit development."""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///shopfront.sqlite3"
    currency: str = "EUR"
    tax_rate_percent: int = 20
    page_size: int = 25
    low_stock_threshold: int = 5
    debug: bool = False


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    return Settings(
        database_url=env.get("SHOPFRONT_DATABASE_URL", Settings.database_url),
        currency=env.get("SHOPFRONT_CURRENCY", Settings.currency).upper(),
        tax_rate_percent=int(env.get("SHOPFRONT_TAX_RATE", Settings.tax_rate_percent)),
        page_size=int(env.get("SHOPFRONT_PAGE_SIZE", Settings.page_size)),
        low_stock_threshold=int(env.get("SHOPFRONT_LOW_STOCK", Settings.low_stock_threshold)),
        debug=_bool(env.get("SHOPFRONT_DEBUG", "0")),
    )
