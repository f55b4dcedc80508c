"""Shopfront: the demo backend that HXO's example plans pack, prime and document.

A small order-management service: customers place orders for products, orders are invoiced,
paid, shipped and sometimes refunded. Packages, leaves first: `utils` and `core` (no internal
imports), `models`, `repositories`, `services`, `api`, `jobs`, and `app` which wires them.
"""

__version__ = "1.4.0"
__all__ = ["__version__"]
