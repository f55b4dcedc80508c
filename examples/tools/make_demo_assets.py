"""Write the binary assets of the demo workspace (examples/workspace/assets/).

Everything is produced by small pure-Python encoders, deterministically (the same bytes on
every run), so the assets are real files that any viewer or player opens:

- PNG: truecolour, zlib-compressed scanlines with CRCs (RFC 2083);
- GIF: 89a with a global palette and variable-width LZW (GIF89a spec);
- JPEG: baseline JFIF whose 8x8 blocks are flat colours, so only DC coefficients are coded
  (a valid, if blocky, image; the encoder stays a page long);
- WAV: 16-bit PCM through the `wave` module.

Fonts are not drawn here: `--fonts` subsets DejaVu Sans (Bitstream Vera licence, shipped by
Debian's fonts-dejavu-core) to ASCII with fontTools and writes TTF and WOFF files with the
licence beside them. fontTools is only needed for that step, which the committed files make
unnecessary: `python examples/tools/make_demo_assets.py [--fonts]`.
"""

from __future__ import annotations

import argparse
import math
import shutil
import struct
import wave
import zlib
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "workspace" / "assets"
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
DEJAVU_COPYRIGHT = Path("/usr/share/doc/fonts-dejavu-core/copyright")

Pixel = tuple[int, int, int]


# --- PNG ----------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, pixel: callable) -> bytes:
    rows = b"".join(
        b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height)
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(rows, 9))
        + _chunk(b"IEND", b"")
    )


# --- GIF ----------------------------------------------------------------------------------


def _lzw(indices: list[int], min_code_size: int) -> bytes:
    clear, end = 1 << min_code_size, (1 << min_code_size) + 1
    out = bytearray()
    acc = nbits = 0

    def emit(code: int, size: int) -> None:
        nonlocal acc, nbits
        acc |= code << nbits
        nbits += size
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8

    def reset() -> tuple[dict[tuple[int, ...], int], int, int]:
        return {(i,): i for i in range(clear)}, end + 1, min_code_size + 1

    table, next_code, size = reset()
    emit(clear, size)
    word: tuple[int, ...] = ()
    for index in indices:
        candidate = (*word, index)
        if candidate in table:
            word = candidate
            continue
        emit(table[word], size)
        if next_code < 4096:
            table[candidate] = next_code
            next_code += 1
            # The decoder widens codes once the table reaches the current width.
            if next_code > (1 << size) and size < 12:
                size += 1
        else:
            emit(clear, size)
            table, next_code, size = reset()
        word = (index,)
    emit(table[word], size)
    emit(end, size)
    if nbits:
        out.append(acc & 0xFF)
    return bytes(out)


def gif(width: int, height: int, palette: list[Pixel], index: callable) -> bytes:
    bits = max(1, math.ceil(math.log2(len(palette))))
    colours = palette + [(0, 0, 0)] * ((1 << bits) - len(palette))
    data = _lzw([index(x, y) for y in range(height) for x in range(width)], max(2, bits))
    blocks = b"".join(
        bytes([len(data[i : i + 255])]) + data[i : i + 255] for i in range(0, len(data), 255)
    )
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", width, height, 0x80 | ((bits - 1) << 4) | (bits - 1), 0, 0)
        + b"".join(bytes(c) for c in colours)
        + b","
        + struct.pack("<HHHHB", 0, 0, width, height, 0)
        + bytes([max(2, bits)])
        + blocks
        + b"\x00;"
    )


# --- JPEG (baseline, DC only) -------------------------------------------------------------

# Annex K.3 luminance DC table: code lengths 1..16 and the categories they code.
DC_BITS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
DC_VALUES = list(range(12))
# An AC table with a single symbol, end-of-block: every block has no AC coefficient.
AC_BITS = [1] + [0] * 15
AC_VALUES = [0x00]
QUANT = 8  # DC of a flat 8x8 block is 8 * (value - 128): quantised, exactly value - 128


def _huffman_codes(bits: list[int], values: list[int]) -> dict[int, tuple[int, int]]:
    codes, code, k = {}, 0, 0
    for length, count in enumerate(bits, start=1):
        for _ in range(count):
            codes[values[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def jpeg(width: int, height: int, block_colour: callable) -> bytes:
    assert width % 8 == 0 and height % 8 == 0
    dc_codes, ac_codes = _huffman_codes(DC_BITS, DC_VALUES), _huffman_codes(AC_BITS, AC_VALUES)
    out = bytearray()
    acc = nbits = 0

    def put(code: int, length: int) -> None:
        nonlocal acc, nbits
        for shift in range(length - 1, -1, -1):
            acc = (acc << 1) | ((code >> shift) & 1)
            nbits += 1
            if nbits == 8:
                out.append(acc)
                if acc == 0xFF:
                    out.append(0x00)  # byte stuffing inside entropy-coded data
                acc = nbits = 0

    previous = [0, 0, 0]
    for by in range(height // 8):
        for bx in range(width // 8):
            r, g, b = block_colour(bx, by)
            ycc = (
                0.299 * r + 0.587 * g + 0.114 * b,
                128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
                128 + 0.5 * r - 0.418688 * g - 0.081312 * b,
            )
            for c, value in enumerate(ycc):
                dc = max(0, min(255, round(value))) - 128
                diff, previous[c] = dc - previous[c], dc
                category = abs(diff).bit_length()
                put(*dc_codes[category])
                if category:
                    put(diff if diff > 0 else diff + (1 << category) - 1, category)
                put(*ac_codes[0x00])
    if nbits:
        put((1 << (8 - nbits)) - 1, 8 - nbits)  # pad with one bits
    components = b"".join(bytes([i, 0x11, 0]) for i in (1, 2, 3))
    return (
        b"\xff\xd8"
        + _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
        + _segment(0xDB, b"\x00" + bytes([QUANT] * 64))
        + _segment(0xC0, struct.pack(">BHHB", 8, height, width, 3) + components)
        + _segment(0xC4, b"\x00" + bytes(DC_BITS) + bytes(DC_VALUES))
        + _segment(0xC4, b"\x10" + bytes(AC_BITS) + bytes(AC_VALUES))
        + _segment(0xDA, b"\x03" + b"".join(bytes([i, 0x00]) for i in (1, 2, 3)) + b"\x00\x3f\x00")
        + bytes(out)
        + b"\xff\xd9"
    )


# --- WAV ----------------------------------------------------------------------------------


def chime(path: Path, notes: list[float], seconds: float, rate: int = 16_000) -> None:
    frames = bytearray()
    total = int(rate * seconds)
    for i in range(total):
        t = i / rate
        note = notes[min(len(notes) - 1, int(t / seconds * len(notes)))]
        envelope = math.exp(-4 * (t % (seconds / len(notes))))
        sample = 0.35 * envelope * math.sin(2 * math.pi * note * t)
        frames += struct.pack("<h", int(sample * 32767))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))


# --- the demo's assets --------------------------------------------------------------------

BRAND = (37, 99, 235)
ACCENT = (245, 158, 11)


def _mix(a: Pixel, b: Pixel, t: float) -> Pixel:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def write_images(root: Path) -> None:
    images = root / "images"
    (images / "icons").mkdir(parents=True, exist_ok=True)

    def logo(x: int, y: int) -> Pixel:
        d = math.hypot(x - 31.5, y - 31.5)
        if d < 22:
            return _mix(BRAND, (255, 255, 255), max(0.0, (x - y) / 64))
        return ACCENT if d < 28 else (255, 255, 255)

    (images / "logo.png").write_bytes(png(64, 64, logo))
    (images / "brand-logo@2x.png").write_bytes(png(128, 128, lambda x, y: logo(x // 2, y // 2)))

    def cart(x: int, y: int) -> Pixel:
        body = 6 <= x <= 25 and 8 <= y <= 20 and (y - 8) <= (25 - x)
        wheels = math.hypot(x - 10, y - 25) < 3 or math.hypot(x - 22, y - 25) < 3
        return (30, 41, 59) if body or wheels else (255, 255, 255)

    (images / "icons" / "cart.png").write_bytes(png(32, 32, cart))
    (images / "icons" / "user.png").write_bytes(
        png(
            32,
            32,
            lambda x, y: (
                BRAND
                if math.hypot(x - 16, y - 11) < 6 or (y > 19 and math.hypot(x - 16, y - 32) < 13)
                else (255, 255, 255)
            ),
        )
    )
    palette = [(255, 255, 255), BRAND, ACCENT, (30, 41, 59)]
    (images / "spinner.gif").write_bytes(
        gif(
            24,
            24,
            palette,
            lambda x, y: (
                (1 + int((math.atan2(y - 11.5, x - 11.5) + math.pi) / (2 * math.pi) * 3) % 3)
                if 6 < math.hypot(x - 11.5, y - 11.5) < 11
                else 0
            ),
        )
    )
    (images / "pattern.gif").write_bytes(
        gif(48, 32, palette, lambda x, y: ((x // 8) + (y // 8)) % 4)
    )
    (images / "hero.jpg").write_bytes(
        jpeg(160, 96, lambda bx, by: _mix(BRAND, ACCENT, (bx + by) / (20 + 12 - 2)))
    )
    (images / "banner-sale.jpg").write_bytes(
        jpeg(
            240,
            64,
            lambda bx, by: ACCENT if (bx + by) % 4 < 2 else _mix(ACCENT, (255, 255, 255), 0.6),
        )
    )


def write_media(root: Path) -> None:
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    chime(media / "order-placed.wav", [659.25, 783.99, 1046.5], 0.6)
    chime(media / "error.wav", [220.0, 196.0], 0.4)


def write_fonts(root: Path) -> None:
    """A 95-glyph ASCII subset of DejaVu Sans as TTF and WOFF (needs fontTools)."""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    fonts = root / "fonts"
    fonts.mkdir(parents=True, exist_ok=True)
    options = subset.Options()
    options.name_IDs = ["*"]
    options.notdef_outline = True
    options.recalc_timestamp = False  # same bytes on every run
    for flavor, suffix in ((None, "ttf"), ("woff", "woff")):
        font = TTFont(str(DEJAVU), recalcTimestamp=False)
        subsetter = subset.Subsetter(options)
        subsetter.populate(unicodes=range(0x20, 0x7F))
        subsetter.subset(font)
        font.flavor = flavor
        font.save(str(fonts / f"shopfront-sans.{suffix}"), reorderTables=True)
    shutil.copyfile(DEJAVU_COPYRIGHT, fonts / "LICENSE-DejaVu.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fonts", action="store_true", help="also subset DejaVu Sans")
    parser.add_argument("--root", type=Path, default=ASSETS)
    args = parser.parse_args()
    write_images(args.root)
    write_media(args.root)
    if args.fonts:
        write_fonts(args.root)
    print(f"assets written under {args.root}")


if __name__ == "__main__":
    main()
