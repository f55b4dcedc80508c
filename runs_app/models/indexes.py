"""The search indexes that executors write: assets (index_assets) and documentation pages
(docs_index). Rows are keyed by a stable id (workspace + path or route), so re-indexing
upserts instead of duplicating.

Full-text search over pages is database-specific and lives outside the ORM: an FTS5 table kept
in sync by triggers on SQLite, a GIN expression index on PostgreSQL (migration 0002); queries
are in `runs_app.search`.
"""

from __future__ import annotations

from django.db import models


class AssetIndexEntry(models.Model):
    workspace = models.CharField(max_length=100)
    path = models.CharField(max_length=1000, help_text="Relative to the workspace root")
    name = models.CharField(max_length=255, db_index=True)
    bucket = models.CharField(max_length=20, db_index=True)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, db_index=True)
    media_type = models.CharField(max_length=100)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    indexed_at = models.DateTimeField()
    # Plain ids, not foreign keys: the index outlives the runs that wrote it.
    run_id = models.BigIntegerField(null=True, blank=True)
    partition_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["workspace", "path"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "path"], name="asset_unique_path")
        ]
        verbose_name = "indexed asset"

    def __str__(self) -> str:
        return f"{self.workspace}:{self.path}"


class DocPage(models.Model):
    workspace = models.CharField(max_length=100)
    route = models.CharField(max_length=500)
    # The route prefix (partition) that owns the page; re-indexing a prefix prunes its pages.
    prefix = models.CharField(max_length=500)
    path = models.CharField(max_length=1000, help_text="Relative to the workspace root")
    title = models.CharField(max_length=300)
    headings = models.TextField(blank=True, default="", help_text="One heading per line")
    body = models.TextField(blank=True, default="")
    words = models.PositiveIntegerField(default=0)
    size = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    # Whether the text was cut at HXO_DOCS_MAX_INDEXED_CHARS (runs_app.kinds.docs).
    truncated = models.BooleanField(
        default=False, help_text="The page's text was cut at HXO_DOCS_MAX_INDEXED_CHARS"
    )
    # The runs of title, headings and body in scripts written without spaces (CJK, Thai...),
    # one line each; a trigram index over it finds words inside them (runs_app.search).
    spaceless = models.TextField(
        blank=True,
        default="",
        help_text="Its text in scripts written without spaces (CJK, Thai...), for substring search",
    )
    indexed_at = models.DateTimeField()
    run_id = models.BigIntegerField(null=True, blank=True)
    partition_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["workspace", "route"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "route"], name="docpage_unique_route")
        ]
        indexes = [models.Index(fields=["workspace", "prefix"], name="docpage_prefix")]
        verbose_name = "indexed documentation page"

    def __str__(self) -> str:
        return f"{self.workspace}:{self.route}"

    @property
    def heading_list(self) -> list[str]:
        return [h for h in self.headings.splitlines() if h]


class RegistryEntry(models.Model):
    """One module's registry entry, written by deploy.prime's `warm_registry`.

    A table, not a cache: a cache may evict (Django's file cache culls at 300 entries), and a
    registry that silently loses entries reports work it no longer holds. `entry` is the
    document `runs_app.kinds.prime.registry_entry` makes, sealed by `entry_digest`.
    """

    workspace = models.CharField(max_length=100)
    module = models.CharField(max_length=500)
    path = models.CharField(max_length=1000, help_text="Relative to the workspace root")
    source_sha256 = models.CharField(max_length=64)
    entry = models.JSONField()
    entry_digest = models.CharField(max_length=64)
    written_at = models.DateTimeField()
    run_id = models.BigIntegerField(null=True, blank=True)
    partition_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["workspace", "module"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "module"], name="registry_unique_module")
        ]
        verbose_name = "module registry entry"
        verbose_name_plural = "module registry entries"

    def __str__(self) -> str:
        return f"{self.workspace}:{self.module}"
