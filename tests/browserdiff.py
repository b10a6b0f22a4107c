"""The browser differential (issue 44): cut and mutated pictures in the formats browsers draw, rendered by
headless Chromium and decoded by the scanner. A file Chromium draws with visible content must be scored,
and what the model sees must be close to what Chromium drew. Used by tests/test_browser_diff.py (a fixed
seed) and scripts/browser_differential.py (a larger run).

Pictures are made in code: gradients and flat shapes, nothing else."""

from __future__ import annotations

import base64
import io
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mirror_scan.model.bundle import Preprocess
from mirror_scan.scan.decoders.decode import Limits, decode
from mirror_scan.scan.decoders.frames import NEUTRAL_BACKGROUND

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SIZE = 48
PREP = Preprocess(size=(SIZE, SIZE), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bicubic",
                  resize_mode="squash")  # fmt: skip
VISIBLE_SHARE = 0.05  # Chromium drew something when this share of pixels is not transparent ...
VISIBLE_STD = 4.0  # ... and they are not one flat colour (levels): what the scanner calls "no pixels"


def have_chromium() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


def chromium(profile_dir: str, extra_flags: tuple[str, ...] = ()):
    """Debian's headless Chromium through Selenium, offline, with its profile in `profile_dir`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers on the network
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile_dir}", *extra_flags):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def start_chromium(profile_dir: str):
    """Chromium for drawing pictures: its colour managed to sRGB (what the scanner's views are)."""
    driver = chromium(profile_dir, ("--force-color-profile=srgb",))
    driver.set_script_timeout(60)
    driver.get("about:blank")
    return driver


_DRAW_ALL = """
const [sources, done] = arguments;
const out = [];
let next = 0;
function one() {
    if (next >= sources.length) { done(out); return; }
    const img = new Image();
    const settle = (drawn) => { out.push(drawn); next += 1; one(); };
    img.onload = () => {
        if (!img.naturalWidth || !img.naturalHeight || img.naturalWidth * img.naturalHeight > 4000000) {
            settle(null); return;
        }
        const canvas = document.createElement('canvas');
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const context = canvas.getContext('2d');
        context.drawImage(img, 0, 0);
        const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
        let text = '';
        for (let i = 0; i < data.length; i += 8192) text += String.fromCharCode.apply(null, data.subarray(i, i + 8192));
        settle([canvas.width, canvas.height, btoa(text)]);
    };
    img.onerror = () => settle(null);
    img.src = sources[next];
}
one();
"""


def drawn_by_chromium(driver, files: list[tuple[bytes, str]]) -> list[np.ndarray | None]:
    """Each picture as Chromium draws it (HxWx4 uint8, its first frame), or None when it shows none."""
    sources = [f"data:{mime};base64,{base64.b64encode(data).decode()}" for data, mime in files]
    results = []
    for start in range(0, len(sources), 50):
        results += driver.execute_async_script(_DRAW_ALL, sources[start : start + 50])
    out: list[np.ndarray | None] = []
    for result in results:
        if result is None:
            out.append(None)
            continue
        width, height, packed = result
        out.append(np.frombuffer(base64.b64decode(packed), np.uint8).reshape(height, width, 4))
    return out


def composited(rgba: np.ndarray) -> np.ndarray:
    """Chromium's drawing on the scanner's neutral grey, at the model's input size (as the scanner squashes)."""
    picture = Image.alpha_composite(
        Image.new("RGBA", (rgba.shape[1], rgba.shape[0]), (*NEUTRAL_BACKGROUND, 255)), Image.fromarray(rgba, "RGBA")
    ).convert("RGB")
    if picture.size != (SIZE, SIZE):
        picture = picture.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return np.asarray(picture, np.float64)


def _drew(rgba: np.ndarray) -> np.ndarray:
    """Where Chromium drew (any alpha), at the model's input size."""
    mask = Image.fromarray(np.where(rgba[..., 3] > 0, 255, 0).astype(np.uint8), "L")
    if mask.size != (SIZE, SIZE):
        mask = mask.resize((SIZE, SIZE), Image.Resampling.NEAREST)
    return np.asarray(mask) > 0


def visible(rgba: np.ndarray) -> bool:
    shown = rgba[..., 3] > 0
    if shown.mean() < VISIBLE_SHARE:
        return False
    return float(rgba[..., :3][shown].astype(np.float64).std(axis=0).max()) > VISIBLE_STD


@dataclass
class Outcome:
    name: str
    drawn: bool  # Chromium drew it with visible content
    scored: bool  # the scanner decoded rows for the model
    difference: float | None  # the largest per-channel mean absolute difference, in levels (both drew it)
    said: str  # the scanner's error, or its first note


def judge(name: str, data: bytes, rgba: np.ndarray | None) -> Outcome:
    decoded = decode(data, PREP, Limits())
    shown = rgba is not None and visible(rgba)
    if isinstance(decoded, str):
        return Outcome(name, shown, False, None, decoded)
    said = decoded.notes[0] if decoded.notes else ""
    if rgba is None or not shown:
        return Outcome(name, shown, True, None, said)
    ours = decoded.pixels[0].transpose(1, 2, 0).astype(np.float64) * 255.0
    if ours.shape[:2] != (SIZE, SIZE) or rgba.shape[0] != rgba.shape[1]:
        return Outcome(name, shown, True, None, said)  # tiles or a canvas of another shape: not compared
    # compared where Chromium drew: what it leaves transparent (rows that never came) is the page's background
    drew = _drew(rgba)
    difference = float(np.abs(composited(rgba) - ours)[drew].mean(axis=0).max())
    return Outcome(name, shown, True, difference, said)


# ---------------------------------------------------------------- the pictures


def picture(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """Gradients with two flat rectangles: structure the eye sees, no fine texture (lossy codecs keep it)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    a, b, c = rng.uniform(-4, 4, 3)
    rgb = np.stack([40 + a * x + 60, 200 - b * y, 90 + c * (x - y) / 2 + 40], axis=-1)
    for _ in range(2):
        x0, y0 = rng.integers(0, size - 12, 2)
        rgb[y0 : y0 + 12, x0 : x0 + 16] = rng.integers(0, 255, 3)
    return rgb.clip(0, 255).astype(np.uint8)


def _saved(image: Image.Image | list[Image.Image], fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    if isinstance(image, list):
        image[0].save(buf, fmt, save_all=True, append_images=image[1:], **options)
    else:
        image.save(buf, fmt, **options)
    return buf.getvalue()


def _frames(rng: np.random.Generator, count: int = 3) -> list[Image.Image]:
    return [Image.fromarray(picture(rng)) for _ in range(count)]


def _bmp(pixels: np.ndarray, depth: int, compression: int = 0, masks: tuple[int, ...] = (),
         palette: np.ndarray | None = None, header: int = 40) -> bytes:  # fmt: skip
    """A bottom-up BMP written by hand (Pillow writes only a few layouts)."""
    height, width = pixels.shape[:2]
    stride = (width * depth + 31) // 32 * 4
    rows = []
    for row in pixels[::-1]:
        if depth == 16:  # masks: 5-6-5 or 4-4-4-4 (alpha)
            r, g, b = (row[:, i].astype(np.uint32) for i in range(3))
            if len(masks) == 4:
                packed = (r >> 4) << 8 | (g >> 4) << 4 | (b >> 4) | 0xF000
            else:
                packed = (r >> 3) << 11 | (g >> 2) << 5 | (b >> 3)
            raw = packed.astype("<u2").tobytes()
        elif depth == 32:  # masks: alpha at the top, colours 8-8-8 below
            r, g, b = (row[:, i].astype(np.uint32) for i in range(3))
            raw = (0xFF000000 | r << 16 | g << 8 | b).astype("<u4").tobytes()
        elif depth == 2:
            indices = row.astype(np.uint8)
            padded = np.concatenate([indices, np.zeros(-len(indices) % 4, np.uint8)]).reshape(-1, 4)
            raw = (padded[:, 0] << 6 | padded[:, 1] << 4 | padded[:, 2] << 2 | padded[:, 3]).astype(np.uint8).tobytes()
        else:  # 24
            raw = row[:, ::-1].tobytes()
        rows.append(raw + b"\0" * (stride - len(raw)))
    pixel_bytes = b"".join(rows)
    extra = struct.pack(f"<{len(masks)}I", *masks) if masks and header == 40 else b""
    info = struct.pack("<IiiHHIIiiII", header, width, height, 1, depth, compression, len(pixel_bytes), 2835, 2835,
                       0 if palette is None else len(palette), 0)  # fmt: skip
    if header > 40:
        info += struct.pack("<4I", *(tuple(masks) + (0,) * 4)[:4]).ljust(header - 40, b"\0")  # masks, then zeros
    table = b"" if palette is None else b"".join(bytes([b, g, r, 0]) for r, g, b in palette)
    offset = 14 + len(info) + len(extra) + len(table)
    return b"BM" + struct.pack("<IHHI", offset + len(pixel_bytes), 0, 0, offset) + info + extra + table + pixel_bytes


def _two_bit(rng: np.random.Generator) -> bytes:
    palette = rng.integers(0, 255, (4, 3))
    rgb = picture(rng)
    indices = (rgb.astype(np.int32).sum(axis=-1) * 4 // (3 * 256)).clip(0, 3)
    return _bmp(indices, 2, palette=palette)


def _translucent(rng: np.random.Generator) -> np.ndarray:
    return np.dstack([picture(rng), np.full((SIZE, SIZE), 200, np.uint8)])


def _interlaced_gif(rng: np.random.Generator) -> bytes:
    return _saved(Image.fromarray(picture(rng)).quantize(64), "GIF", interlace=True)


BASES: dict[str, tuple[str, Callable[[np.random.Generator], bytes]]] = {
    "png": ("image/png", lambda r: _saved(Image.fromarray(picture(r)), "PNG")),
    "png-rgba": ("image/png", lambda r: _saved(Image.fromarray(_translucent(r)), "PNG")),
    "apng": ("image/png", lambda r: _saved(_frames(r), "PNG", duration=100)),
    "gif": ("image/gif", lambda r: _saved(Image.fromarray(picture(r)).quantize(64), "GIF", interlace=False)),
    "gif-interlaced": ("image/gif", _interlaced_gif),
    "gif-animated": ("image/gif", lambda r: _saved([f.quantize(64) for f in _frames(r)], "GIF", duration=100, loop=0,
                                                          interlace=False)),
    "jpeg": ("image/jpeg", lambda r: _saved(Image.fromarray(picture(r)), "JPEG", quality=90)),
    "jpeg-progressive": ("image/jpeg", lambda r: _saved(Image.fromarray(picture(r)), "JPEG", quality=90,
                                                        progressive=True)),
    "webp-lossy": ("image/webp", lambda r: _saved(Image.fromarray(picture(r)), "WEBP", quality=90)),
    "webp-lossless": ("image/webp", lambda r: _saved(Image.fromarray(picture(r)), "WEBP", lossless=True)),
    "webp-animated": ("image/webp", lambda r: _saved(_frames(r), "WEBP", duration=100, quality=90)),
    "bmp-24": ("image/bmp", lambda r: _bmp(picture(r), 24)),
    "bmp-bitfields-565": ("image/bmp", lambda r: _bmp(picture(r), 16, 3, (0xF800, 0x07E0, 0x001F))),
    "bmp-alphabitfields-4444": ("image/bmp", lambda r: _bmp(picture(r), 16, 6, (0x0F00, 0x00F0, 0x000F, 0xF000))),
    "bmp-bitfields-32-v4": ("image/bmp", lambda r: _bmp(picture(r), 32, 3, (0xFF0000, 0xFF00, 0xFF, 0xFF000000),
                                                        header=108)),
    "bmp-2bit": ("image/bmp", _two_bit),
    "avif": ("image/avif", lambda r: _saved(Image.fromarray(picture(r)), "AVIF", quality=90)),
    "avif-animated": ("image/avif", lambda r: _saved(_frames(r), "AVIF", duration=100, quality=90)),
}  # fmt: skip


def mutated(kind: str, rng: np.random.Generator) -> tuple[str, bytes, str]:
    """One file of this kind, cut short or with bytes changed: (name, bytes, mime)."""
    mime, make = BASES[kind]
    data = make(rng)
    how = rng.choice(["cut", "cut", "flip", "flip+cut", "tail"])
    if how == "tail":  # the last few bytes missing: the end marker and a little of the pixels
        keep = len(data) - int(rng.integers(1, 40))
        return f"{kind} missing its last {len(data) - keep} bytes", data[:keep], mime
    name = kind
    if "flip" in how:
        body = bytearray(data)
        count = int(rng.integers(1, 4))
        for _ in range(count):
            at = int(rng.integers(min(32, len(body) - 1), len(body)))
            body[at] = int(rng.integers(0, 256))
        data, name = bytes(body), f"{name} with {count} byte(s) changed"
    if "cut" in how:
        keep = int(len(data) * rng.uniform(0.05, 0.95))
        data, name = data[:keep], f"{name} cut at {keep} of {len(data)} bytes"
    return name, data, mime


def corpus(seed: int, count: int) -> list[tuple[str, bytes, str]]:
    rng = np.random.default_rng(seed)
    kinds = sorted(BASES)
    return [mutated(kinds[i % len(kinds)], rng) for i in range(count)]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
