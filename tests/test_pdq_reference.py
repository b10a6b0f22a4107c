"""The PDQ hash mirror-scan stores and shares is the one Meta's reference computes for the picture as
stored, whatever the model's input size: facebook/ThreatExchange pdq/cpp/io/pdqio.cpp (decode, no EXIF
rotation, over 512 px sampled to 512x512 by nearest neighbour) into pdqhash (the C++ hasher's Python
binding, which python-threatexchange and HMA use). Images are made here; quality is kept; nothing under
quality 50 is stored for matching or export."""

from __future__ import annotations

import io

import numpy as np
import pdqhash
import pytest
from PIL import Image

from mirror_scan.lists.hashes import MATCH_DISTANCE, bits_to_hex
from mirror_scan.model.bundle import Preprocess
from mirror_scan.model.synthetic import generated_image
from mirror_scan.scan.decoders.decode import Limits, decode


def reference_hash(data: bytes) -> tuple[str, int]:
    """Decoded whole (no draft), orientation as stored, RGB, nearest neighbour to 512x512 when bigger."""
    image = Image.open(io.BytesIO(data))
    image.load()
    arr = np.asarray(image.convert("RGB"))
    height, width = arr.shape[:2]
    if height > 512 or width > 512:
        arr = arr[(np.arange(512) * height) // 512][:, (np.arange(512) * width) // 512]
    bits, quality = pdqhash.compute(np.ascontiguousarray(arr))
    return bits_to_hex(bits), int(quality)


def distance(a: str, b: str) -> int:
    return int(
        np.unpackbits(np.frombuffer(bytes.fromhex(a), np.uint8) ^ np.frombuffer(bytes.fromhex(b), np.uint8)).sum()
    )


def with_orientation(image: Image.Image, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, format=fmt, exif=exif.tobytes(), **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


PREPS = {
    size: Preprocess((size, size), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", "shortest") for size in (32, 224, 336)
}


FORMATS = ["JPEG", "PNG", "WEBP"]
SIZES = [(160, 120), (700, 300), (1000, 1000), (1800, 1200), (2600, 2100)]
# Every format at every size, and every model input size with every format and at every picture size: a
# Latin square over the model sizes (the hash is taken from the decoded picture before the model's view
# is made from it, so the full cross product repeated the same check three times, for two minutes of CI).
CASES = [
    (sorted(PREPS)[(f + s) % len(PREPS)], fmt, size) for f, fmt in enumerate(FORMATS) for s, size in enumerate(SIZES)
]


@pytest.mark.parametrize(("model_size", "fmt", "size"), CASES)
def test_the_stored_hash_is_the_reference_hash_of_the_picture_as_stored(model_size, fmt, size):
    image = generated_image(sum(size) % 97, *size)
    for orientation in range(1, 9):
        data = with_orientation(image, orientation, fmt)
        decoded = decode(data, PREPS[model_size], Limits())
        assert not isinstance(decoded, str), decoded
        ((stored, quality),) = decoded.pdq
        expected, expected_quality = reference_hash(data)
        assert stored == expected, (fmt, size, orientation, model_size)
        assert quality == expected_quality
        # The rotated view (what the model saw) is among the variants kept for our own matching.
        rotated = decoded.pdq_variants[:8]
        assert stored == rotated[0]


def test_a_flat_picture_keeps_its_low_quality_and_is_never_matched_or_exported(tmp_path, tiny_bundle_master):
    import sqlite3

    from .conftest import run_cli

    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (90, 90, 90)).save(buf, "PNG")
    flat = buf.getvalue()
    decoded = decode(flat, PREPS[32], Limits())
    ((digest, quality),) = decoded.pdq
    assert (digest, quality) == reference_hash(flat) and quality < 50
    mirror = tmp_path / "m"
    mirror.mkdir()
    (mirror / "flat.png").write_bytes(flat)
    state = tmp_path / "s.db"
    run_cli("scan", str(mirror), "--model", str(tiny_bundle_master), "--severity=-1", "--state", str(state),
            "--quarantine", str(tmp_path / "q"))  # fmt: skip
    with sqlite3.connect(state) as db:
        assert db.execute("SELECT pdq, quality FROM picture_hashes").fetchall() == [(digest, quality)]
    exported = run_cli("hashlist", "export", "--unreviewed", "--state", str(state), check=True).stdout
    assert "\npdq," not in exported and "sha256," in exported  # the file's identity, but no PDQ under 50


def test_animation_frames_are_hashed_at_their_decoded_size():
    """Frames kept for the model are reduced to its input size; their PDQ is taken before that."""
    from .mediafiles import animated_gif

    data = animated_gif(3, size=(600, 400))
    decoded = decode(data, PREPS[32], Limits())
    image = Image.open(io.BytesIO(data))
    for index, (digest, _) in enumerate(decoded.pdq):
        image.seek(index)
        arr = np.asarray(image.convert("RGB"))
        arr = arr[(np.arange(512) * 400) // 512][:, (np.arange(512) * 600) // 512]
        assert distance(digest, bits_to_hex(pdqhash.compute(np.ascontiguousarray(arr))[0])) == 0
    assert MATCH_DISTANCE == 31


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "1", "I;16"])
def test_the_512_samples_are_the_references_pixel_for_pixel_in_every_mode(mode):
    # hashes.reference_pixels samples with Pillow (no copy of the whole picture) before converting to RGB;
    # the reference converts, then samples at floor(x*W/512) (pdqio.cpp:102-103). The same pixels, exactly.
    from mirror_scan.lists.hashes import flatten_depth, reference_pixels

    sizes = [(513, 513), (1023, 700), (2048, 1536), (4097, 515), (600, 5000), (520, 40000), (3001, 2999)]
    for index, (width, height) in enumerate(sizes):
        noise = np.random.default_rng(index).integers(0, 256, (height, width, 3), dtype=np.uint8)
        picture = Image.fromarray(noise, "RGB")  # every pixel unlike its neighbours: a wrong sample shows
        if mode == "P":
            picture = Image.fromarray(noise[:, :, 0], "L")
            picture.putpalette(np.random.default_rng(99).integers(0, 256, 768, dtype=np.uint8).tobytes())
            picture.info["transparency"] = 3
        elif mode == "I;16":
            wide = np.asarray(picture.convert("L"), np.uint16) * 257
            picture = Image.frombytes("I;16", (width, height), wide.astype("<u2").tobytes())
        else:
            picture = picture.convert(mode)
        arr = np.asarray(flatten_depth(picture).convert("RGB"))
        expected = arr[(np.arange(512) * height) // 512][:, (np.arange(512) * width) // 512]
        got = reference_pixels(picture)
        assert got.shape == (512, 512, 3) and got.flags.c_contiguous
        assert (got == expected).all(), (mode, width, height)
