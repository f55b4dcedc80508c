"""Customers: who orders. `email_domain` is derived from the email and backfilled in bulk."""

from __future__ import annotations

import dataclasses

from backend.models.base import Entity
from backend.utils.text import email_domain
from backend.utils.validation import require_country, require_email, require_text


@dataclasses.dataclass(kw_only=True)
class Customer(Entity):
    id_prefix = "cus"

    name: str
    email: str
    country: str
    email_domain: str = ""
    marketing_opt_in: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.name = require_text(self.name, "name")
        self.email = require_email(self.email)
        self.country = require_country(self.country)
        self.email_domain = email_domain(self.email)
