"""The customers.email_domain backfill, as the application computes it.

In the database, HXO's example plan `migrate-backfill-email-domain` runs the same rule in
batches of customer ids:

    UPDATE customers
    SET email_domain = lower(substr(email, length(rtrim(email, replace(email, '@', ''))) + 1))
    WHERE id >= :start AND id < :end AND email_domain IS NULL

`expected_domain` is the reference the SQL must agree with.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from backend.utils.text import email_domain


def expected_domain(email: str) -> str:
    return email_domain(email)


def batches(ids: Iterable[int], size: int) -> Iterator[tuple[int, int]]:
    """[start, end) id ranges of at most `size` keys covering `ids`."""
    ordered = sorted(ids)
    if not ordered:
        return
    start = ordered[0]
    while start <= ordered[-1]:
        yield start, start + size
        start += size
