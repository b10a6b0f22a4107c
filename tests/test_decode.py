"""Decoding details: orientation, transparency, JPEG draft mode, limits, format sniffing."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mirror_scan.model.bundle import Preprocess
from mirror_scan.model.preprocess import to_model_input
from mirror_scan.model.synthetic import generated_image
from mirror_scan.scan.decoders.decode import Limits, decode, sniff

from .mediafiles import image_bytes, png_declaring

PREP = Preprocess(
    size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bicubic", resize_mode="shortest"
)


def _png(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    upright = generated_image(1, 90, 40)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a phone writes, with orientation 6 or 8
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    decoded = decode(_png(stored, exif=exif), PREP)
    expected = to_model_input(stored.transpose(Image.Transpose.ROTATE_270), PREP)
    np.testing.assert_allclose(decoded.pixels[0], expected, atol=1e-6)
    assert not np.allclose(decoded.pixels[0], to_model_input(stored, PREP), atol=1e-3)


def test_transparency_is_composited_onto_neutral_grey():
    hidden = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # red pixels nobody sees
    decoded = decode(_png(hidden), PREP)
    grey = to_model_input(Image.new("RGB", (40, 40), (128, 128, 128)), PREP)
    np.testing.assert_allclose(decoded.pixels[0], grey, atol=1e-6)


def test_big_jpeg_decodes_in_draft_mode_close_to_full_decode():
    data = image_bytes("JPEG", 3, size=(3200, 2400), quality=90)
    drafted = decode(data, PREP).pixels[0]
    full = to_model_input(Image.open(io.BytesIO(data)).convert("RGB"), PREP)
    assert np.abs(drafted - full).mean() < 0.05  # same picture, reduced-size decode


def test_pixel_and_frame_limits():
    assert "decompression bomb" in decode(png_declaring(30000, 30000), PREP)
    assert "over the limit" in decode(image_bytes("PNG", 1, size=(200, 200)), PREP, Limits(max_pixels=10_000))
    frames = [generated_image(i, 16, 16) for i in range(30)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = decode(buf.getvalue(), PREP, Limits(max_frames=3))
    assert out.pixels.shape[0] == 3 and out.total_frames == 30


def test_sniff_uses_bytes_only():
    assert sniff(image_bytes("JPEG", 1)[:64]) == "jpeg"
    assert sniff(image_bytes("WEBP", 1)[:64]) == "webp"
    assert sniff(image_bytes("AVIF", 1)[:64]) == "avif"
    assert sniff(b"\x00\x00\x00\x1cftypisom\x00\x00\x02\x00isomiso2mp41") == "mp4"
    assert sniff(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01") == "webm"
    assert sniff(b"hello world") is None
