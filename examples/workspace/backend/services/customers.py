"""Registering and updating customers."""

from __future__ import annotations

from backend.core.errors import Conflict
from backend.core.events import bus
from backend.models.customer import Customer
from backend.repositories.memory import Repository


class CustomerService:
    def __init__(self, repository: Repository[Customer] | None = None) -> None:
        self.customers = repository or Repository[Customer]("customer")

    def register(self, *, name: str, email: str, country: str) -> Customer:
        customer = Customer(name=name, email=email, country=country)
        if self.customers.filter(lambda c: c.email == customer.email):
            raise Conflict(f"{customer.email} is already registered", field="email")
        self.customers.add(customer)
        bus.publish("customer.registered", customer_id=customer.id, country=customer.country)
        return customer

    def opt_in(self, customer_id: str, opted_in: bool) -> Customer:
        customer = self.customers.get(customer_id)
        customer.marketing_opt_in = opted_in
        customer.touch()
        return customer

    def by_domain(self, domain: str) -> list[Customer]:
        return self.customers.filter(lambda c: c.email_domain == domain.lower())
