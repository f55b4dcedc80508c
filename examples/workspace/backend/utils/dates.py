"""Dates in UTC, and business-day arithmetic for shipping estimates."""

from __future__ import annotations

import datetime as dt

UTC = dt.UTC


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


def add_business_days(start: dt.date, days: int) -> dt.date:
    current = start
    remaining = days
    while remaining > 0:
        current += dt.timedelta(days=1)
        if current.weekday() < 5:
            remaining -= 1
    return current


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")
