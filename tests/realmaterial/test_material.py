"""The tier's fetch-and-cache helper and its gate: pinned bytes only, a cache that is reused,
and offline a skip with one message, under CI=true a failure."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.realmaterial.conftest import archives
from tests.realmaterial.material import CATALOGUE, MaterialError, fetch, sha256_of

pytestmark = pytest.mark.real_material

REPO = Path(__file__).resolve().parents[2]
# The smallest item: the requests sdist (131 kB).
SMALL = CATALOGUE["requests"]


@pytest.fixture
def cache(material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache of its own (once the tier's material could be had at all)."""
    material("requests")
    root = tmp_path / "cache"
    monkeypatch.setenv("HXO_REAL_MATERIAL_CACHE", str(root))
    return root


def test_a_verified_cached_archive_is_used_as_it_is(cache):
    verified = archives()["requests"]  # type: ignore[index]  (the tier's gate passed)
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(verified, cache / SMALL.filename)
    before = (cache / SMALL.filename).stat().st_mtime_ns

    path, fetched = fetch(SMALL)

    assert (path, fetched) == (cache / SMALL.filename, False)
    assert path.stat().st_mtime_ns == before


def test_a_cached_archive_with_other_bytes_is_fetched_again(cache):
    cache.mkdir(parents=True, exist_ok=True)
    (cache / SMALL.filename).write_bytes(b"not the sdist")

    path, fetched = fetch(SMALL)

    assert fetched and sha256_of(path) == SMALL.sha256


def test_fetched_bytes_that_are_not_the_pin_are_refused(cache):
    wrong = dataclasses.replace(SMALL, sha256="0" * 64)

    with pytest.raises(MaterialError, match="is not the pinned"):
        fetch(wrong)

    assert [p.name for p in cache.iterdir()] == []  # no temporary folder left either


def _run_tier_offline(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    """One test of the tier in a child pytest with an empty cache and registries that do
    not answer (a closed local port), as on a laptop without a network."""
    # The child picks its own test database and queue names (conftest: from its pid).
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("HXO_TEST_DB_SUFFIX", "HXO_CLUSTER_NAME")
    }
    env = {
        **inherited,
        "HXO_REAL_MATERIAL_CACHE": str(tmp_path / "cache"),
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple/",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
        "npm_config_registry": "http://127.0.0.1:9/",
        "npm_config_fetch_retries": "0",
        "CI": ci,
    }
    test = "tests/realmaterial/test_material.py::test_a_verified_cached_archive_is_used_as_it_is"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", test],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_offline_the_tier_skips_with_one_message_and_under_ci_it_fails(tmp_path):
    laptop = _run_tier_offline(tmp_path, ci="false")
    assert laptop.returncode == 0, laptop.stdout
    assert "1 skipped" in laptop.stdout
    assert "tests/realmaterial/conftest.py" in laptop.stdout  # one location for the tier
    assert "real material unavailable (offline?)" in laptop.stdout
    assert "-m 'not real_material'" in laptop.stdout

    ci = _run_tier_offline(tmp_path, ci="true")
    assert ci.returncode == 1, ci.stdout
    assert "CI=true needs the real material" in ci.stdout
