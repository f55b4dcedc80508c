"""Live validation: p50 and p95 server time of validating plans of 1, 10 and 50 stages through
POST /api/v1/validate/ (the one validator the editor's live validation also calls)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT, bench_user, setup_django


def plan_of(stages: int) -> dict[str, Any]:
    template = json.loads(
        (ROOT / "examples" / "plans" / "pack-backend-by-filesize.json").read_text()
    )
    base = template["stages"][0]
    return {
        "name": f"{stages} stages",
        "stages": [
            {**base, "id": f"s{i}", "depends_on": [f"s{i - 1}"] if i else []} for i in range(stages)
        ],
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    setup_django()
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    user = bench_user()
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient(HTTP_HOST="localhost")
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    rounds = 60 if args.quick else 300
    result: dict[str, Any] = {"plans": {}}
    for stages in (1, 10, 50):
        body = {"plan": plan_of(stages)}
        response = client.post("/api/v1/validate/", body, format="json")
        assert response.status_code == 200 and response.json()["valid"], response.content[:500]
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            client.post("/api/v1/validate/", body, format="json")
            times.append((time.perf_counter() - t) * 1000)
        result["plans"][str(stages)] = {
            "rounds": rounds,
            "p50_ms": statistics.median(times),
            "p95_ms": percentile(times, 0.95),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
