"""Docs search beyond Latin scripts: pages in Japanese, Chinese, Thai, Russian, Greek, Hindi and
accented Latin are indexed by the real docs.index executor, then searched. Runs on SQLite and
on PostgreSQL (with the PostgreSQL environment of the README); each assertion is about which
page a query finds, and the marked snippet."""

# Pages and queries are in the scripts under test: their letters are meant.
# ruff: noqa: RUF001

from __future__ import annotations

import importlib

import pytest
from django.db import connection

from runs_app import search
from runs_app.models import DocPage
from runs_app.search import search_docs
from tests.runs_app.kinds.conftest import write_files
from tests.runs_app.kinds.test_kinds_docs import docs_stage

pytestmark = pytest.mark.django_db

PAGES = {
    "docs/tokyo.md": "# 東京の案内\n\n東京の案内所は駅の近くにあります。"
    "京都へは新幹線で行きます。\n",
    "docs/beijing.md": "# 北京指南\n\n欢迎来到北京。这里有很多名胜古迹。\n",
    "docs/thai.md": "# ภาษาไทย\n\nภาษาไทยเป็นภาษาราชการของประเทศไทยและใช้ในโรงเรียน\n",
    "docs/deploy-ru.md": "# Развёртывание\n\nРазвёртывание приложения на сервере "
    "занимает минуту.\n",
    "docs/greek.md": "# Η ώρα\n\nΗ ώρα της αλήθειας έφτασε για το έργο.\n",
    "docs/hindi.md": "# हिन्दी\n\nहिन्दी भारत की एक भाषा है। नमस्ते दुनिया।\n",
    "docs/cafe.md": "# Café crème\n\nLe café de Ñandú est prêt.\n",
    "docs/plain.md": "# Plain\n\nNothing but ASCII text here, a ledger of words.\n",
    # Dotted and slashed names: PostgreSQL's parser read each as one token (a host, a file).
    "docs/dotted.md": "# Names\n\nRun deploy.pack over django.db.models and docs/api, "
    "mail ops@example.org.\n",
}


@pytest.fixture
def indexed(driver, workspace):
    write_files(workspace, PAGES)
    run = driver.run(docs_stage("t"), dry_run=False)
    assert sum(r["docs_indexed"] for r in run.results) == DocPage.objects.count() == len(PAGES)
    return run


def routes(q: str) -> list[str]:
    return [h["route"] for h in search_docs(q)]


@pytest.mark.parametrize(
    ("query", "route"),
    [
        ("東京", "/docs/tokyo/"),  # 2 characters inside a longer run: the LIKE path
        ("案内所", "/docs/tokyo/"),  # 3 or more: the trigram path
        ("駅", "/docs/tokyo/"),  # one character
        ("北京", "/docs/beijing/"),
        ("名胜古迹", "/docs/beijing/"),
        ("ราชการ", "/docs/thai/"),  # a Thai word inside a sentence
        ("ประเทศไทย", "/docs/thai/"),
        ("развертывание", "/docs/deploy-ru/"),  # ё folded
        ("Развёртывание", "/docs/deploy-ru/"),
        ("приложения", "/docs/deploy-ru/"),
        ("ωρα", "/docs/greek/"),  # tonos folded
        ("ΑΛΗΘΕΙΑΣ", "/docs/greek/"),
        ("έργο", "/docs/greek/"),
        ("हिन्दी", "/docs/hindi/"),  # a Devanagari word with its vowel signs and virama
        ("नमस्ते", "/docs/hindi/"),
        ("cafe", "/docs/cafe/"),  # Latin accents, as before
        ("nandu pret", "/docs/cafe/"),
        ("ledger", "/docs/plain/"),
    ],
)
def test_each_script_finds_its_page(indexed, query, route):
    hits = search_docs(query)

    assert [h["route"] for h in hits] == [route]
    assert "<mark>" in hits[0]["snippet_html"], hits[0]


@pytest.mark.parametrize("word", ["deploy", "pack", "models", "api", "ops"])
def test_a_word_inside_a_dotted_or_slashed_name_finds_its_page(indexed, word):
    hits = search_docs(word)

    assert [h["route"] for h in hits] == ["/docs/dotted/"]
    assert "<mark>" in hits[0]["snippet_html"], hits[0]


def test_one_character_finds_every_page_holding_it(indexed):
    assert sorted(routes("京")) == ["/docs/beijing/", "/docs/tokyo/"]


def test_a_short_cjk_query_is_marked_in_the_snippet(indexed):
    (hit,) = search_docs("東京")

    assert "<mark>東京</mark>の案内所" in hit["snippet_html"]


def test_a_devanagari_word_is_not_split_into_letters(indexed):
    # "हिन" is the first letters of "हिन्दी" without its virama and the rest: as letters it
    # would match; as a word it does not.
    assert routes("हिन") == []
    assert routes("भाषा") == ["/docs/hindi/"]


def test_words_and_runs_combine_and_a_missing_run_finds_nothing(indexed):
    assert routes("東京 京都") == ["/docs/tokyo/"]
    assert routes("東京 大阪") == []
    assert routes("大阪") == []
    assert routes("ภาษาอังกฤษ") == []
    assert routes("ledger 東京") == []


def test_a_workspace_filter_applies_to_every_path(indexed):
    assert routes("東京") == ["/docs/tokyo/"]
    assert search_docs("東京", workspace="elsewhere") == []
    assert search_docs("案内所", workspace="elsewhere") == []
    assert search_docs("ωρα", workspace="elsewhere") == []
    assert search.count_docs("東京", workspace="t") == 1
    assert search.count_docs("案内所") == 1
    assert search.count_docs("ωρα") == 1


def test_reindexing_a_changed_page_moves_it_in_every_index(driver, workspace, indexed):
    (workspace / "docs/tokyo.md").write_text("# 大阪の案内\n\n大阪城へようこそ。\n")
    driver.run(docs_stage("t"), dry_run=False)

    assert routes("大阪城") == routes("大阪") == ["/docs/tokyo/"]
    assert routes("東京") == routes("案内所") == []
    (workspace / "docs/tokyo.md").unlink()
    driver.run(docs_stage("t"), dry_run=False)
    assert routes("大阪城") == routes("大阪") == []


def test_spaceless_text_is_stored_apart_for_the_substring_index(indexed):
    tokyo = DocPage.objects.get(route="/docs/tokyo/")
    plain = DocPage.objects.get(route="/docs/plain/")

    assert "東京の案内所は駅の近くにあります" in tokyo.spaceless
    assert plain.spaceless == ""


def test_the_migration_and_the_queries_share_their_frozen_copies():
    migration = importlib.import_module("runs_app.migrations.0008_docs_search_scripts")

    assert migration.PG_DOCUMENT == search.PG_DOCUMENT
    assert migration.greek_cyrillic_folds() == search.greek_cyrillic_folds()
    assert migration.SPACELESS_CLASS == search.SPACELESS_CLASS
    assert migration.spaceless("a 東京の b", "ภาษา") == search.spaceless("a 東京の b", "ภาษา")


def test_fold_keeps_offsets_and_letters_of_their_own():
    text = "Развёртывание ώρα Ώρα café İstanbul йод"

    assert len(search.fold(text)) == len(text)
    assert search.fold(text) == "Развертывание ωρα Ωρα cafe Istanbul йод"


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_postgresql_has_unaccent_and_a_trigram_index():
    with connection.cursor() as cursor:
        cursor.execute("SELECT hxo_unaccent('Развёртывание ώρα')")
        assert cursor.fetchone()[0] == "Развертывание ωρα"
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'runs_app_docpage_spaceless'"
        )
        assert "gin_trgm_ops" in cursor.fetchone()[0]
