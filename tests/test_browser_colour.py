"""What the model sees is what a browser draws (issue 44, finding 3): pictures whose stored samples differ
from what headless Chromium draws (a PNG's gAMA or cICP, an embedded ICC profile) are compared with Chromium's own
rendering, read back from a canvas (Chromium colour-manages an image drawn into a 2D canvas to sRGB).
The reference is Debian's Chromium, driven by Selenium, as the console's browser tests do."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest

from mirror_scan.model.bundle import Preprocess
from mirror_scan.scan.decoders.decode import Limits, decode
from tests import browserdiff
from tests.browserdiff import png_chunk

pytestmark = pytest.mark.skipif(
    not browserdiff.have_chromium(),
    reason="Debian's chromium and chromium-driver are not installed (scripts/install.sh installs them as root)",
)
PREP = Preprocess(size=(64, 64), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bicubic",
                  resize_mode="squash")  # fmt: skip
TOLERANCE = 6.0  # mean absolute difference per channel, in 0-255 levels (resampling and rounding differ)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    driver = browserdiff.start_chromium(str(tmp_path_factory.mktemp("chromium")))
    yield driver
    driver.quit()


def drawn(driver, data: bytes, mime: str) -> np.ndarray:
    """The picture as Chromium draws it: HxWx3, 0-255 (alpha composited on nothing: opaque pictures only)."""
    (pixels,) = browserdiff.drawn_by_chromium(driver, [(data, mime)])
    assert pixels is not None, "Chromium did not draw it"
    return pixels[..., :3].astype(np.float64)


def model_sees(data: bytes) -> np.ndarray:
    decoded = decode(data, PREP, Limits())
    assert not isinstance(decoded, str), decoded
    return decoded.pixels[0].transpose(1, 2, 0).astype(np.float64) * 255.0


def _png(pixels: np.ndarray, *chunks: bytes) -> bytes:
    """A PNG of these pixels with extra chunks placed before IDAT (where gAMA and iCCP belong)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG")
    png = buf.getvalue()
    return png[:33] + b"".join(chunks) + png[33:]


def _picture() -> np.ndarray:
    """A smooth picture (gradients, no edges: resampling differences stay small)."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)
    return np.stack([40 + 3 * x, 200 - 2 * y, 90 + x + y], axis=-1).clip(0, 255).astype(np.uint8)


def _s15(value: float) -> bytes:
    """ICC's s15Fixed16Number."""
    return struct.pack(">i", round(value * 65536))


def _icc(device_class: bytes, colour_space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    """An ICC v2 profile: the 128-byte header (D50 illuminant), the tag table, the tags 4-byte aligned."""
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I", offset + len(body)) + b"lcms" + bytes([2, 0x10, 0, 0]) + device_class
              + colour_space + pcs + b"\0" * 12 + b"acsp" + b"\0" * 28 + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
              + b"\0" * 48)  # fmt: skip
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def _linear_rgb_profile() -> bytes:
    """An ICC v2 display profile: sRGB's primaries and white, with a linear (gamma 1.0) tone curve, so the
    samples a file stores under it are light, not sRGB-encoded: a browser brightens their dark parts."""
    s15 = _s15

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)

    curve = b"curv" + b"\0" * 4 + struct.pack(">I", 1) + struct.pack(">H", 256) + b"\0\0"  # gamma 1.0, padded
    desc_text = b"linear sRGB\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(desc_text)) + desc_text + b"\0" * 12 + b"\0" * 67
    tags = [  # D50-adapted sRGB colorants, as the sRGB profile carries them
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)),
        (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
        (b"desc", desc),
        (b"cprt", b"text" + b"\0" * 4 + b"none\0\0\0\0"),
    ]
    return _icc(b"mntr", b"RGB ", b"XYZ ", tags)


CASES = {
    "png gAMA 0.1 (drawn much darker than stored)": lambda: _png(
        _picture(), png_chunk(b"gAMA", struct.pack(">I", 10000))
    ),
    "png gAMA 1/2.2 (drawn as stored)": lambda: _png(_picture(), png_chunk(b"gAMA", struct.pack(">I", 45455))),
    "png gAMA 1.0 (drawn darker)": lambda: _png(_picture(), png_chunk(b"gAMA", struct.pack(">I", 100000))),
    "png iCCP linear profile (drawn brighter)": lambda: _png(
        _picture(), png_chunk(b"iCCP", b"linear\0\0" + zlib.compress(_linear_rgb_profile()))
    ),
    "jpeg with the linear profile (APP2)": lambda: _jpeg_with_profile(_picture(), _linear_rgb_profile()),
    "jpeg CMYK with a CMYK profile (Pillow alone draws its negative)": lambda: _cmyk_jpeg(),
    # cICP (H.273 code points: primaries, transfer, matrix 0, full range): Chromium draws it over iCCP.
    "png cICP linear transfer (drawn brighter)": lambda: _png(_picture(), png_chunk(b"cICP", bytes([1, 8, 0, 1]))),
    "png cICP BT.709 transfer (drawn darker)": lambda: _png(_picture(), png_chunk(b"cICP", bytes([1, 1, 0, 1]))),
    "png cICP gamma 2.8": lambda: _png(_picture(), png_chunk(b"cICP", bytes([1, 5, 0, 1]))),
    "png cICP BT.2020 primaries": lambda: _png(_picture(), png_chunk(b"cICP", bytes([9, 13, 0, 1]))),
    "png cICP Display P3 over a linear iCCP": lambda: _png(
        _picture(),
        png_chunk(b"cICP", bytes([12, 4, 0, 1])),
        png_chunk(b"iCCP", b"linear\0\0" + zlib.compress(_linear_rgb_profile())),
    ),
}


def _cmyk_profile(grid: int = 9) -> bytes:
    """An ICC v2 output profile, CMYK to Lab through a 9-point lut16 (mft2) A2B0, that says its samples
    are RGB stored as inks: C is red, M green, Y blue, K darkens them all. Pillow's own CMYK conversion
    (ink subtracted from white) draws the negative of what browsers draw with the profile."""
    ink = np.linspace(0.0, 1.0, grid)
    c, m, y, k = np.meshgrid(ink, ink, ink, ink, indexing="ij")  # the first input varies slowest (ICC)
    srgb = np.stack([c * (1 - k), m * (1 - k), y * (1 - k)], axis=-1)
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    d50_srgb = np.array([[0.4361, 0.3851, 0.1431], [0.2225, 0.7169, 0.0606], [0.0139, 0.0971, 0.7141]])
    xyz = linear @ d50_srgb.T / np.array([0.9642, 1.0, 0.8249])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = np.stack([(116 * f[..., 1] - 16) / 100 * 65280, (500 * (f[..., 0] - f[..., 1]) + 128) * 256,
                    (200 * (f[..., 1] - f[..., 2]) + 128) * 256], axis=-1)  # fmt: skip
    clut = np.round(np.clip(lab, 0, 65535)).astype(">u2").tobytes()

    s15 = _s15
    identity = b"".join(s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ramp = struct.pack(">HH", 0, 65535)
    lut = (
        b"mft2" + b"\0" * 4 + bytes([4, 3, grid, 0]) + identity + struct.pack(">HH", 2, 2) + ramp * 4 + clut + ramp * 3
    )
    text = b"inks as RGB\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 79
    white = b"XYZ " + b"\0" * 4 + s15(0.9642) + s15(1.0) + s15(0.8249)
    return _icc(b"prtr", b"CMYK", b"Lab ", [(b"desc", desc), (b"wtpt", white), (b"A2B0", lut)])


def _cmyk_jpeg() -> bytes:
    """The picture's RGB as inks, with black growing down the picture (0 to 40%), under _cmyk_profile."""
    from PIL import Image

    black = np.repeat(np.linspace(0, 100, 64).astype(np.uint8)[:, None, None], 64, axis=1)
    inks = np.concatenate([_picture(), black], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(inks, "CMYK").save(buf, "JPEG", quality=95, icc_profile=_cmyk_profile())
    return buf.getvalue()


def _jpeg_with_profile(pixels: np.ndarray, icc: bytes) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=95, icc_profile=icc)
    return buf.getvalue()


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_model_sees_the_colours_chromium_draws(chromium, case):
    data = CASES[case]()
    mime = "image/jpeg" if data[:2] == b"\xff\xd8" else "image/png"
    browser = drawn(chromium, data, mime)
    ours = model_sees(data)
    assert browser.shape[:2] == ours.shape[:2] == (64, 64)
    difference = np.abs(browser - ours).mean(axis=(0, 1))
    stored = np.asarray(_picture(), dtype=np.float64)
    assert difference.max() <= TOLERANCE, (case, difference, browser.mean((0, 1)), ours.mean((0, 1)),
                                           stored.mean((0, 1)))  # fmt: skip


def _apng_cut_in_its_second_frame() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(44)
    smooth = _picture()
    frames = [Image.fromarray(smooth)] + [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
                                          for _ in range(2)]  # fmt: skip
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:], duration=100)
    data = buf.getvalue()
    second = data.index(b"fdAT")
    return data[: second + 4 + 3000]  # inside the second frame's data


CUT = {"apng cut inside its second frame (browsers show the default image)": _apng_cut_in_its_second_frame}


@pytest.mark.parametrize("case", sorted(CUT))
def test_a_cut_file_chromium_draws_is_scored_as_drawn(chromium, case):
    data = CUT[case]()
    browser = drawn(chromium, data, "image/png")
    ours = model_sees(data)
    difference = np.abs(browser - ours).mean(axis=(0, 1))
    assert difference.max() <= TOLERANCE, (case, difference)
