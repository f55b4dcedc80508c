"""Asset formats as real projects have them: SVG, WebP, AVIF and ICO dimensions, media types of
YAML, source maps and web manifests, hostile SVG and decompression bombs, and real npm
packages (Font Awesome's 2,000 SVGs and web fonts, Bootstrap's styles and source maps)."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
from PIL import Image, features

from runs_app.kinds.assets import BUCKETS, MEDIA_TYPES, image_size, media_type, svg_size
from runs_app.models import AssetIndexEntry

pytestmark = pytest.mark.django_db

CACHE = Path(os.environ.get("HXO_MATERIAL_CACHE", "/work/cache")) / "npm"
PACKAGES = {
    "bootstrap": ("bootstrap@5.3.3", "bootstrap-5.3.3.tgz"),
    "fontawesome": (
        "@fortawesome/fontawesome-free@6.5.2",
        "fortawesome-fontawesome-free-6.5.2.tgz",
    ),
}


def npm_package(name: str, dest: Path) -> Path:
    """The npm package `name` (PACKAGES, pinned) unpacked under dest; fetched once with
    `npm pack` into the shared cache. Offline: skipped, except under CI=true (a failure)."""
    spec, filename = PACKAGES[name]
    tarball = CACHE / filename
    if not tarball.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(
                ["npm", "pack", spec, "--silent"],
                cwd=CACHE,
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            if os.environ.get("CI") == "true":
                pytest.fail(f"could not fetch {spec} under CI=true: {exc}")
            pytest.skip(f"{spec} is not cached in {CACHE} and could not be fetched: {exc}")
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    return dest / "package"


def index_stage(workspace: str, root: str = ".", kind: str = "assets.index", **params) -> dict:
    return {
        "id": "assets",
        "kind": kind,
        "partitioner": "by_asset_bucket",
        "executor": "index_assets",
        "params": {"workspace": workspace, "root": root, **params},
    }


def register(settings, name: str, root: Path) -> None:
    settings.HXO_WORKSPACES = {**settings.HXO_WORKSPACES, name: str(root.resolve())}


def raster(fmt: str, size: tuple[int, int], **options) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA" if fmt in ("ICO", "WEBP", "AVIF", "PNG") else "RGB", size, "teal").save(
        out, fmt, **options
    )
    return out.getvalue()


# --- Raster formats through Pillow -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "size", "options", "expected"),
    [
        ("WEBP", (300, 200), {}, (300, 200)),
        ("WEBP", (64, 32), {"lossless": True}, (64, 32)),
        ("AVIF", (120, 80), {}, (120, 80)),
        # An ICO is as large as its largest entry.
        ("ICO", (64, 64), {"sizes": [(16, 16), (32, 32), (64, 64)]}, (64, 64)),
        ("BMP", (7, 5), {}, (7, 5)),
        ("PNG", (640, 1), {}, (640, 1)),
        ("GIF", (24, 16), {}, (24, 16)),
        ("JPEG", (33, 17), {}, (33, 17)),
    ],
)
def test_raster_dimensions_come_from_pillow(fmt, size, options, expected):
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("this Pillow wheel has no AVIF support")

    assert image_size(raster(fmt, size, **options)) == expected


def test_the_installed_pillow_reads_webp_and_avif():
    # Pillow >= 11.3 wheels bundle libavif; the pyproject pin relies on it.
    assert features.check("webp") and features.check("avif")


def test_a_decompression_bomb_header_gives_no_size_and_no_error():
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")

    assert image_size(bomb) is None


@pytest.mark.parametrize(
    "data", [b"", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"\x00\x00\x01\x00junk"]
)
def test_truncated_or_garbage_images_give_no_size(data):
    assert image_size(data) is None


# --- SVG --------------------------------------------------------------------------------------

SVG = '<svg xmlns="http://www.w3.org/2000/svg" {}><rect width="1" height="1"/></svg>'


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ('width="120" height="40"', (120, 40)),
        ('width="120px" height="40px" viewBox="0 0 12 4"', (120, 40)),
        ('viewBox="0 0 576 512"', (576, 512)),
        ('viewBox="0,0,24,24"', (24, 24)),
        ('viewBox="-10 -10 50.5 20.2"', (50, 20)),
        ('width="1in" height="72pt"', (96, 96)),
        ('width="25.4mm" height="2.54cm"', (96, 96)),
        ('width="6pc" height="1e2"', (96, 100)),
        ('width="200" viewBox="0 0 100 50"', (200, 100)),
        ('height="10" viewBox="0 0 100 50"', (20, 10)),
        ('width="100%" height="100%" viewBox="0 0 30 20"', (30, 20)),
        ('width="2em" height="2em" viewBox="0 0 16 16"', (16, 16)),
        ('width="100%" height="100%"', None),
        ('width="0" height="0"', None),
        ('viewBox="0 0 -5 5"', None),
        ('viewBox="nonsense"', None),
        ("", None),
    ],
)
def test_svg_dimensions_from_width_height_or_viewbox(attributes, expected):
    data = SVG.format(attributes).encode()

    assert svg_size(data) == expected
    assert image_size(data, "icon.svg") == expected


def test_svg_with_a_declaration_doctype_and_comment_before_the_root_is_measured():
    data = (
        b'\xef\xbb\xbf<?xml version="1.0" encoding="UTF-8"?>\n<!-- made by hand -->\n'
        b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
        b'"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n'
        b'<svg version="1.1" xmlns="http://www.w3.org/2000/svg" width="48" height="32"/>'
    )

    assert image_size(data, "legacy.svg") == (48, 32)


def test_hostile_svg_is_refused_without_expanding_anything():
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            f'<!ENTITY {c} "{("&" + p + ";") * 10}">'.encode()
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        )
        + b']><svg xmlns="http://www.w3.org/2000/svg" width="&i;" height="1"/>'
    )
    external = (
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1">&x;</svg>'
    )

    assert svg_size(laughs) is None
    assert svg_size(external) is None


def test_non_svg_xml_and_truncated_svg():
    assert svg_size(b'<html><svg width="1" height="1"/></html>') is None
    assert svg_size(b"<svg width='5' height='6'") is None  # the root never ends
    # Only the root element is parsed: the rest may be cut off.
    assert svg_size(b'<svg xmlns="http://www.w3.org/2000/svg" width="5" height="6"><path d="M') == (
        5,
        6,
    )
    assert image_size(b"body { color: red }", "site.css") is None


# --- Media types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("metadata/icons.yml", "application/yaml"),
        ("config.yaml", "application/yaml"),
        ("dist/css/bootstrap.css.map", "application/json"),
        ("site.webmanifest", "application/manifest+json"),
        ("webfonts/fa-solid-900.woff2", "font/woff2"),
        ("img/photo.avif", "image/avif"),
        ("img/photo.webp", "image/webp"),
        ("img/logo.SVG", "image/svg+xml"),
        ("favicon.ico", "image/vnd.microsoft.icon"),
        ("module.wasm", "application/wasm"),
        ("LICENSE", "application/octet-stream"),
    ],
)
def test_media_types(name, expected):
    assert media_type(name) == expected


def test_every_bucketed_suffix_has_a_media_type_from_the_table():
    for bucket, suffixes in BUCKETS.items():
        for suffix in suffixes:
            assert suffix in MEDIA_TYPES, (bucket, suffix)


# --- Indexing a workspace of generated images -----------------------------------------------


def test_indexing_measures_webp_avif_ico_and_svg_files(driver, settings, scratch, tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "a.webp").write_bytes(raster("WEBP", (300, 200)))
    (root / "b.avif").write_bytes(raster("AVIF", (120, 80)))
    (root / "favicon.ico").write_bytes(raster("ICO", (48, 48), sizes=[(16, 16), (48, 48)]))
    (root / "c.svg").write_bytes(SVG.format('viewBox="0 0 576 512"').encode())
    # A WebP larger than the header read for other formats is still measured (read whole).
    big = Image.frombytes("RGB", (900, 900), os.urandom(900 * 900 * 3))
    out = io.BytesIO()
    big.save(out, "WEBP", lossless=True)
    assert len(out.getvalue()) > 256 * 1024
    (root / "noise.webp").write_bytes(out.getvalue())
    register(settings, "imgs", root)

    run = driver.run(index_stage("imgs"), dry_run=False)

    sizes = {e.path: (e.media_type, e.width, e.height) for e in AssetIndexEntry.objects.all()}
    assert sizes == {
        "a.webp": ("image/webp", 300, 200),
        "b.avif": ("image/avif", 120, 80),
        "favicon.ico": ("image/vnd.microsoft.icon", 48, 48),
        "c.svg": ("image/svg+xml", 576, 512),
        "noise.webp": ("image/webp", 900, 900),
    }
    assert sum(r["images_measured"] for r in run.results) == 5


# --- Real npm packages ------------------------------------------------------------------------


def _find(root: Path) -> set[str]:
    return {str(Path(d, f).relative_to(root)) for d, _dirs, files in os.walk(root) for f in files}


def test_font_awesome_svgs_fonts_and_yaml_are_indexed_as_find_lists_them(
    driver, settings, scratch, tmp_path
):
    package = npm_package("fontawesome", tmp_path / "fa")
    register(settings, "fa", package)

    run = driver.run(index_stage("fa"), dry_run=False)

    rows = {e.path: e for e in AssetIndexEntry.objects.filter(workspace="fa")}
    assert set(rows) == _find(package)
    assert sum(r["assets_indexed"] for r in run.results) == len(rows) > 2000
    svgs = [p for p in rows if p.startswith("svgs/")]
    assert len(svgs) > 2000
    for path in svgs:
        # Each icon says its size only in its viewBox; read it independently of the code.
        box = re.search(rb'viewBox="0 0 (\d+) (\d+)"', (package / path).read_bytes())
        assert (rows[path].width, rows[path].height) == (int(box[1]), int(box[2])), path
        assert rows[path].media_type == "image/svg+xml"
    assert (rows["svgs/solid/house.svg"].width, rows["svgs/solid/house.svg"].height) == (576, 512)
    # A sprite sheet has no size of its own (its symbols do): none recorded.
    assert rows["sprites/solid.svg"].width is None
    assert rows["webfonts/fa-solid-900.woff2"].media_type == "font/woff2"
    assert rows["webfonts/fa-solid-900.ttf"].media_type == "font/ttf"
    assert rows["metadata/icons.yml"].media_type == "application/yaml"
    assert rows["metadata/icons.yml"].bucket == "other"


def test_bootstrap_styles_scripts_and_source_maps_get_real_media_types(
    driver, settings, scratch, tmp_path
):
    package = npm_package("bootstrap", tmp_path / "bs")
    register(settings, "bs", package)

    driver.run(index_stage("bs"), dry_run=False)

    rows = {e.path: e for e in AssetIndexEntry.objects.filter(workspace="bs")}
    assert set(rows) == _find(package)
    maps = [p for p in rows if p.endswith(".map")]
    assert len(maps) == 48
    assert {rows[p].media_type for p in maps} == {"application/json"}
    assert rows["dist/css/bootstrap.css"].media_type == "text/css"
    assert rows["dist/js/bootstrap.bundle.js"].media_type == "text/javascript"
    assert rows["scss/_variables.scss"].media_type == "text/x-scss"
    assert {e.media_type for e in rows.values()} <= set(MEDIA_TYPES.values()) | {
        "application/octet-stream"
    }
