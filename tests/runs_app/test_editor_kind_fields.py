"""The editor offers a shared partitioner's fields only to the kinds that read them
(issue 15 §7: a "gzip level" field appeared for assets.index)."""

from __future__ import annotations

from typing import Any

from runs_app.editor.layout import stage_form


def param_fields(kind: str, params: dict[str, Any] | None = None) -> dict[str, str]:
    stage = {
        "id": "s",
        "kind": kind,
        "partitioner": "by_filesize",
        "executor": "pack_archive" if kind == "deploy.pack" else "index_assets",
        "params": params or {"workspace": "demo", "root": "."},
    }
    form = stage_form(0, stage, all_ids=["s"], kinds={}, count=1)
    return {f.path.rsplit(".", 1)[-1]: f.label for f in form.params.children}


def test_gzip_level_is_offered_to_deploy_pack_only() -> None:
    assert param_fields("deploy.pack")["compress_level"] == "gzip level"
    assert "compress_level" not in param_fields("assets.index")
    assert "compress_level" not in param_fields("assets.stage")
    assert "chunk_size_mb" in param_fields("assets.index")


def test_a_level_given_anyway_to_assets_index_is_kept_under_other_params() -> None:
    fields = param_fields("assets.index", {"workspace": "demo", "root": ".", "compress_level": 3})
    assert "compress_level" not in fields
    assert "_extra" in fields
