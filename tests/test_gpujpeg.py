"""nvImageCodec as the JPEG decoder (setting `jpeg_decoder`, scan/decoders/gpujpeg.py; issue 30).

Without a GPU the integration runs on nvImageCodec's own CPU backend (libjpeg-turbo): every decode must
then be Pillow's exactly (pixels, PDQ, notes, errors), which proves the handover (EXIF, ICC, orientation,
MPO, what falls back) without assuming anything about nvJPEG. nvImageCodec is used in decoder worker
processes only (it reports a damaged file by printing, read there from stderr); tests that call the
decoder in this process stand in for a worker (`as_worker`). The GPU test runs only where nvJPEG works
and is measured by scripts/bench_gpu.py; elsewhere it skips, saying why."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from mirror_scan.errors import UsageError
from mirror_scan.model.bundle import Preprocess
from mirror_scan.scan.decoders import gpujpeg
from mirror_scan.scan.decoders.decode import Limits, decode
from mirror_scan.scan.decoders.decodepool import decoders

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


@pytest.fixture
def as_worker(monkeypatch):
    monkeypatch.setattr(gpujpeg, "in_worker", lambda: True)


def _before_eoi(data: bytes, inserted: bytes) -> bytes:
    assert data.endswith(b"\xff\xd9")
    return data[:-2] + inserted + data[-2:]


def _scan_header_twice(data: bytes) -> bytes:
    """An empty first scan: the SOS header repeated (libjpeg: "Didn't expect more than one scan")."""
    sos = data.find(b"\xff\xda")
    header = data[sos : sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")]
    return data[:sos] + header + data[sos:]


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
        # attack (session 9): EXIF that does not parse; Pillow reads it as empty, never a failed decode
        "exif-garbage": _save(oddfiles.noisy(14, (80, 60)), exif=b"Exif\x00\x00garbage!"),
        "exif-cut-tiff": _save(oddfiles.noisy(15, (80, 60)), exif=b"Exif\x00\x00MM\x00*\x00\x00"),
        "ultra-hdr-short": oddfiles.ultra_hdr_short(),  # its gain map is cut; the primary picture is whole
        "mpo": multi_picture_jpeg([jpeg(oddfiles.noisy(9, (160, 120))), jpeg(oddfiles.noisy(10, (120, 90)))]),
    }


def declined() -> dict[str, bytes]:
    """JPEGs left to Pillow: not YCbCr, or cut (Pillow's truncation note and lenient decode)."""
    whole = _save(oddfiles.noisy(11, (240, 180)), quality=90)
    second = _save(oddfiles.noisy(16, (120, 90)))
    return {
        "greyscale": _save(oddfiles.noisy(12, (120, 90)).convert("L")),
        "cmyk": _save(oddfiles.noisy(13, (120, 90)).convert("CMYK")),
        "cut": whole[: len(whole) * 2 // 3],
        # attack (session 9): libjpeg errors after the last scan line, which nvImageCodec prints and then
        # returns the pixels anyway; Pillow's strict decode refuses them and its lenient pass says "partial"
        "unknown-marker-before-eoi": _before_eoi(whole, b"\xff\x20"),
        "bad-dht-before-eoi": _before_eoi(whole, b"\xff\xc4\x00\x03\x00"),
        "second-sof-before-eoi": _before_eoi(whole, whole[whole.find(b"\xff\xc0") :][:19]),
        "scan-header-twice": _scan_header_twice(_save(oddfiles.noisy(17, (97, 71)), quality=90)),
        "lossless-sof3": _save(oddfiles.noisy(19, (64, 48))).replace(b"\xff\xc0", b"\xff\xc3", 1),
        "mpo-damaged-second": multi_picture_jpeg(
            [jpeg(oddfiles.noisy(18, (160, 120))), _before_eoi(second, b"\xff\x20")]
        ),
    }


def _same(left, right) -> None:
    assert not isinstance(left, str) and not isinstance(right, str), (left, right)
    assert np.array_equal(left.pixels, right.pixels)
    assert (left.pdq, left.pdq_variants, left.notes, left.partial, left.total_frames, left.labels) == (
        right.pdq, right.pdq_variants, right.notes, right.partial, right.total_frames, right.labels)  # fmt: skip


@pytest.mark.parametrize("name", sorted(taken()))
def test_nvimgcodec_decodes_these_and_gives_pillows_decode(name, as_worker):
    data = taken()[name]
    with Image.open(io.BytesIO(data)) as img:
        handed = gpujpeg.decoded(img, data, gpujpeg.CPU)
        assert handed is not img, "nvImageCodec declined a JPEG it should decode"
        assert np.array_equal(np.asarray(handed), np.asarray(img.convert("RGB")))
        assert handed.getexif().get(0x0112) == img.getexif().get(0x0112)
        assert handed.info.get("icc_profile") == img.info.get("icc_profile")
    _same(decode(data, PREP, NVCPU), decode(data, PREP, Limits()))


@pytest.mark.parametrize("name", sorted(declined()))
def test_what_nvimgcodec_declines_is_pillows(name, as_worker):
    data = declined()[name]
    if name != "mpo-damaged-second":  # its first picture is whole: declined is the second one
        with Image.open(io.BytesIO(data)) as img:
            assert gpujpeg.decoded(img, data, gpujpeg.CPU) is img
    ours, theirs = decode(data, PREP, NVCPU), decode(data, PREP, Limits())
    if isinstance(theirs, str):
        assert ours == theirs
    else:
        _same(ours, theirs)


def test_in_process_decodes_leave_jpegs_to_pillow():
    """decoders = "thread": what nvImageCodec prints cannot be read back safely beside other threads."""
    data = taken()["baseline-420"]
    with Image.open(io.BytesIO(data)) as img:
        assert gpujpeg.decoded(img, data, gpujpeg.CPU) is img
    assert "nvjpeg" not in decode(data, PREP, NVCPU).cpu_s


def test_rotation_is_applied_after_the_handover(as_worker):
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
            if name in taken() or (name in declined() and name != "mpo-damaged-second"):  # took it, or declined
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
    assert gpujpeg.resolve("auto", "thread") == gpujpeg.PILLOW
    with pytest.raises(UsageError, match="needs decoders = process"):
        gpujpeg.resolve("nvimgcodec", "thread")


def test_a_missing_library_leaves_pillow_decoding(monkeypatch, as_worker):
    monkeypatch.setattr(gpujpeg, "_module", lambda: None)
    monkeypatch.setattr(gpujpeg, "_local", type(gpujpeg._local)())
    data = taken()["baseline-420"]
    with Image.open(io.BytesIO(data)) as img:
        assert gpujpeg.decoded(img, data, gpujpeg.CPU) is img
    assert gpujpeg.rgb_pixels(data, gpujpeg.GPU) is None


def test_on_a_gpu_nvjpeg_is_close_to_pillow(as_worker):
    """Runs where nvJPEG works (a lent GPU machine); scripts/bench_gpu.py records the same figures."""
    if not gpujpeg.works(gpujpeg.GPU):
        pytest.skip("no working nvJPEG here (no NVIDIA GPU, driver or nvidia-nvjpeg-cu12)")
    gpu = Limits(jpeg_decoder=gpujpeg.GPU)
    for name, data in taken().items():
        ours, theirs = decode(data, PREP, gpu), decode(data, PREP, Limits())
        assert float(np.abs(ours.pixels - theirs.pixels).mean()) < 0.02, name  # in [-1, 1]: ~2.5 of 255
        assert all(distance(a, b) <= 16 for (a, _), (b, _) in zip(ours.pdq, theirs.pdq, strict=True)), name
