"""`manage.py hxo_demo`: create the demo target database the example plans migrate.

Idempotent and quick: a database already seeded with this seed version is left alone (so an
applied backfill stays applied); `--reset` drops the demo tables and the ledger and seeds
again, which gives the backfill example its work back. The data is deterministic: the same
seed gives the same rows on every machine.

Tables: `customers` (5,000 rows by default; two thirds imported "before 1.3" with a NULL
`email_domain`, which `examples/plans/migrate-backfill-email-domain.json` fills) and
`orders` (20,000 rows by default).
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from blueprints_app.registry import ComponentError
from runs_app.kinds.migrate import LEDGER_TABLE, LEDGER_TABLES
from runs_app.targets import TargetConnection, connect, get_target

SEED_VERSION = "1"
META_TABLE = "hxo_demo_meta"

SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS {META_TABLE} ("
    "key VARCHAR(50) PRIMARY KEY, value VARCHAR(200) NOT NULL)",
    "CREATE TABLE IF NOT EXISTS customers ("
    "id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL, email VARCHAR(254) NOT NULL, "
    "country CHAR(2) NOT NULL, created_at VARCHAR(40) NOT NULL, email_domain VARCHAR(200))",
    "CREATE TABLE IF NOT EXISTS orders ("
    "id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers (id), "
    "status VARCHAR(20) NOT NULL, total_cents INTEGER NOT NULL, currency CHAR(3) NOT NULL, "
    "created_at VARCHAR(40) NOT NULL)",
]
FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia"]
FIRST += ["Tim", "Margaret", "Dennis", "Katherine", "Linus", "Sophie", "John", "Hedy"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson"]
LAST += ["Perlman", "Berners-Lee", "Hamilton", "Ritchie", "Johnson", "Torvalds", "Wilson"]
# Mixed case on purpose: the backfill lower-cases domains.
DOMAINS = ["example.com", "Example.org", "MAIL.example.net", "shop.example", "post.example.eu"]
COUNTRIES = ["AT", "BE", "DE", "DK", "ES", "FI", "FR", "IE", "IT", "NL", "PL", "PT", "SE"]
STATUSES = ["placed", "paid", "paid", "shipped", "shipped", "shipped", "cancelled"]


def seed_rows(
    customers: int, orders: int, seed: int = 20261125
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    people = []
    for i in range(1, customers + 1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        domain = rng.choice(DOMAINS)
        email = f"{first}.{last}{i}".lower() + "@" + domain
        created = start + dt.timedelta(minutes=i * 97)
        people.append(
            {
                "id": i,
                "name": f"{first} {last}",
                "email": email,
                "country": rng.choice(COUNTRIES),
                "created_at": created.isoformat(),
                # Customers created after the 1.3 release got their domain at registration.
                "email_domain": domain.lower() if i % 3 == 0 else None,
            }
        )
    sales = []
    for i in range(1, orders + 1):
        customer = rng.randint(1, customers)
        sales.append(
            {
                "id": i,
                "customer_id": customer,
                "status": rng.choice(STATUSES),
                "total_cents": rng.randint(299, 49_999),
                "currency": "EUR",
                "created_at": (start + dt.timedelta(minutes=customer * 97 + i)).isoformat(),
            }
        )
    return people, sales


def seeded(conn: TargetConnection) -> bool:
    if not conn.table_exists(META_TABLE):
        return False
    return conn.scalar(f"SELECT value FROM {META_TABLE} WHERE key = 'seed_version'") == (
        SEED_VERSION
    )


class Command(BaseCommand):
    help = "Create and seed the demo target database used by the example migrate plans."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--target", default="demo", help="A name in HXO_DATABASE_TARGETS")
        parser.add_argument("--customers", type=int, default=5_000)
        parser.add_argument("--orders", type=int, default=20_000)
        parser.add_argument(
            "--reset", action="store_true", help="Drop the demo tables and the ledger first"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["target"]
        if options["customers"] < 1 or options["orders"] < 0:
            raise CommandError("--customers must be >= 1 and --orders >= 0")
        try:
            target = get_target(name, path="--target")
            with connect(target, create=True, path="--target") as conn:
                if options["reset"]:
                    for table in ("orders", "customers", LEDGER_TABLE, *LEDGER_TABLES, META_TABLE):
                        conn.execute(f"DROP TABLE IF EXISTS {table}")
                elif seeded(conn):
                    self.stdout.write(f"demo target {name!r} is already seeded ({target.display})")
                    return
                self._seed(conn, options["customers"], options["orders"])
        except ComponentError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from None
        self.stdout.write(
            self.style.SUCCESS(
                f"demo target {name!r} seeded: {options['customers']} customers, "
                f"{options['orders']} orders ({target.display})"
            )
        )

    def _seed(self, conn: TargetConnection, customers: int, orders: int) -> None:
        people, sales = seed_rows(customers, orders)
        conn.begin()
        try:
            for sql in SCHEMA:
                conn.execute(sql)
            # A half-seeded database (an interrupted earlier run) is emptied first.
            conn.execute("DELETE FROM orders")
            conn.execute("DELETE FROM customers")
            conn.executemany(
                "INSERT INTO customers (id, name, email, country, created_at, email_domain) "
                "VALUES (:id, :name, :email, :country, :created_at, :email_domain)",
                people,
            )
            conn.executemany(
                "INSERT INTO orders (id, customer_id, status, total_cents, currency, created_at) "
                "VALUES (:id, :customer_id, :status, :total_cents, :currency, :created_at)",
                sales,
            )
            conn.execute(f"DELETE FROM {META_TABLE} WHERE key = 'seed_version'")
            conn.execute(
                f"INSERT INTO {META_TABLE} (key, value) VALUES ('seed_version', :v)",
                {"v": SEED_VERSION},
            )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
