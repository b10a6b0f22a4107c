"""nvImageCodec as the JPEG decoder (setting `jpeg_decoder`, scan/gpujpeg.py; issue 30).

Without a GPU the integration runs on nvImageCodec's own CPU backend (libjpeg-turbo): every decode must
then be Pillow's exactly (pixels, PDQ, notes), which proves the handover (EXIF, ICC, orientation, MPO,
what falls back) without assuming anything about nvJPEG. The GPU test runs only where nvJPEG works and
is measured by scripts/bench_gpu.py; elsewhere it skips, saying why."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from mirror_scan.errors import UsageError
from mirror_scan.model.bundle import Preprocess
from mirror_scan.scan import gpujpeg
from mirror_scan.scan.decode import Limits, decode
from mirror_scan.scan.decodepool import decoders

from . import oddfiles
from .mediafiles import jpeg, multi_picture_jpeg
from .test_pdq_reference import distance

pytest.importorskip("nvidia.nvimgcodec", reason="nvidia-nvimgcodec-cu12 is not installed (scripts/install.sh)")

PREP = Preprocess(size=(64, 64), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic", resize_mode="shortest")
NVCPU = Limits(jpeg_decoder=gpujpeg.CPU)


def _save(img: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **options)
    return buf.getvalue()


def _rotated_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees to show it
    return _save(oddfiles.noisy(3, (160, 90)), quality=88, exif=exif.tobytes())


def taken() -> dict[str, bytes]:
    """JPEGs nvImageCodec decodes (three YCbCr components, whole)."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    big = oddfiles.noisy(5, (1203, 677))
    return {
        "baseline-420": _save(oddfiles.noisy(1, (321, 207)), quality=85),
        "baseline-444": _save(oddfiles.noisy(2, (256, 256)), quality=95, subsampling=0),
        "baseline-422": _save(oddfiles.noisy(4, (99, 301)), quality=75, subsampling=1),
        "progressive": _save(big, quality=80, progressive=True),
        "optimized-restart": _save(big, quality=70, optimize=True, restart_marker_blocks=3),
        "odd-size": _save(oddfiles.noisy(6, (17, 9)), quality=90),
        "icc-profile": _save(oddfiles.noisy(7, (200, 150)), quality=90, icc_profile=srgb),
        "exif-rotated": _rotated_exif(),
        "trailing-bytes": _save(oddfiles.noisy(8, (120, 80))) + b"\x00" * 64 + b"not a picture",
        "ultra-hdr-short": oddfiles.ultra_hdr_short(),  # its gain map is cut; the primary picture is whole
        "mpo": multi_picture_jpeg([jpeg(oddfiles.noisy(9, (160, 120))), jpeg(oddfiles.noisy(10, (120, 90)))]),
    }


def declined() -> dict[str, bytes]:
    """JPEGs left to Pillow: not YCbCr, or cut (Pillow's truncation note and lenient decode)."""
    whole = _save(oddfiles.noisy(11, (240, 180)), quality=90)
    return {
        "greyscale": _save(oddfiles.noisy(12, (120, 90)).convert("L")),
        "cmyk": _save(oddfiles.noisy(13, (120, 90)).convert("CMYK")),
        "cut": whole[: len(whole) * 2 // 3],
    }


def _same(left, right) -> None:
    assert not isinstance(left, str) and not isinstance(right, str), (left, right)
    assert np.array_equal(left.pixels, right.pixels)
    assert (left.pdq, left.pdq_variants, left.notes, left.partial, left.total_frames, left.labels) == (
        right.pdq, right.pdq_variants, right.notes, right.partial, right.total_frames, right.labels)  # fmt: skip


@pytest.mark.parametrize("name", sorted(taken()))
def test_nvimgcodec_decodes_these_and_gives_pillows_decode(name):
    data = taken()[name]
    with Image.open(io.BytesIO(data)) as img:
        handed = gpujpeg.decoded(img, data, gpujpeg.CPU)
        assert handed is not img, "nvImageCodec declined a JPEG it should decode"
        assert np.array_equal(np.asarray(handed), np.asarray(img.convert("RGB")))
        assert handed.getexif().get(0x0112) == img.getexif().get(0x0112)
        assert handed.info.get("icc_profile") == img.info.get("icc_profile")
    _same(decode(data, PREP, NVCPU), decode(data, PREP, Limits()))


@pytest.mark.parametrize("name", sorted(declined()))
def test_what_nvimgcodec_declines_is_pillows(name):
    data = declined()[name]
    with Image.open(io.BytesIO(data)) as img:
        assert gpujpeg.decoded(img, data, gpujpeg.CPU) is img
    _same(decode(data, PREP, NVCPU), decode(data, PREP, Limits()))


def test_rotation_is_applied_after_the_handover():
    decoded = decode(taken()["exif-rotated"], PREP, NVCPU)
    upright = decode(_save(oddfiles.noisy(3, (160, 90)).transpose(Image.Transpose.ROTATE_270), quality=100), PREP)
    assert float(np.abs(decoded.pixels - upright.pixels).mean()) < 0.05  # the same picture, turned the same way


def test_the_odd_files_corpus_decodes_the_same_through_the_worker_pool():
    """Every odd file (issue 25) in real decoder processes: the same result with nvImageCodec's CPU
    backend as with Pillow, errors included."""
    corpus = {**oddfiles.corpus(), **taken(), **declined()}
    with decoders("process", 2, 60.0) as decoder:
        for name, data in corpus.items():
            ours, theirs = decoder(data, PREP, NVCPU), decoder(data, PREP, Limits())
            if isinstance(theirs, str):
                assert ours == theirs, name
                continue
            _same(ours, theirs)
            if name in taken() or name in declined():  # the worker took the path, or declined it
                assert ("nvjpeg" in ours.cpu_s) == (name in taken()), name
            assert "nvjpeg" not in theirs.cpu_s


def test_settings_resolve_to_a_backend_or_say_what_is_missing():
    assert gpujpeg.resolve("pillow") == gpujpeg.PILLOW
    assert gpujpeg.resolve("auto") == (gpujpeg.GPU if gpujpeg.works(gpujpeg.GPU) else gpujpeg.PILLOW)
    assert gpujpeg.works(gpujpeg.CPU)
    if gpujpeg.works(gpujpeg.GPU):
        assert gpujpeg.resolve("nvimgcodec") == gpujpeg.GPU
    else:
        with pytest.raises(UsageError, match="nvidia-nvjpeg-cu12.*jpeg_decoder = auto or pillow"):
            gpujpeg.resolve("nvimgcodec")
    with pytest.raises(UsageError, match="must be one of"):
        gpujpeg.resolve("cuda")


def test_a_missing_library_leaves_pillow_decoding(monkeypatch):
    monkeypatch.setattr(gpujpeg, "_module", lambda: None)
    monkeypatch.setattr(gpujpeg, "_local", type(gpujpeg._local)())
    data = taken()["baseline-420"]
    with Image.open(io.BytesIO(data)) as img:
        assert gpujpeg.decoded(img, data, gpujpeg.CPU) is img
    assert gpujpeg.rgb_pixels(data, gpujpeg.GPU) is None


def test_on_a_gpu_nvjpeg_is_close_to_pillow():
    """Runs where nvJPEG works (a lent GPU machine); scripts/bench_gpu.py records the same figures."""
    if not gpujpeg.works(gpujpeg.GPU):
        pytest.skip("no working nvJPEG here (no NVIDIA GPU, driver or nvidia-nvjpeg-cu12)")
    gpu = Limits(jpeg_decoder=gpujpeg.GPU)
    for name, data in taken().items():
        ours, theirs = decode(data, PREP, gpu), decode(data, PREP, Limits())
        assert float(np.abs(ours.pixels - theirs.pixels).mean()) < 0.02, name  # in [-1, 1]: ~2.5 of 255
        assert all(distance(a, b) <= 16 for (a, _), (b, _) in zip(ours.pdq, theirs.pdq, strict=True)), name
