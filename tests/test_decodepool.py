"""Decoders in worker processes: a file that crashes the decoder or never finishes costs one worker and
is recorded as an error; the scan goes on, and the next file decodes in a fresh worker. The crash and the
hang are real (os.abort(), a wait for ever) in the worker, triggered through a test-only hook."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from mirror_scan.model.bundle import Preprocess
from mirror_scan.scan.decoders.decode import Limits, decode
from mirror_scan.scan.decoders.decodepool import TEST_HOOK, DecoderPool

from .conftest import run_cli
from .mediafiles import animated_gif, image_bytes

PREP = Preprocess(
    size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bicubic", resize_mode="shortest"
)
POISON = b"\x89PNG\r\n\x1a\nMIRROR-SCAN-TEST poison"  # looks like a PNG: it reaches a decoder


def test_worker_processes_decode_exactly_as_in_process():
    with DecoderPool(2) as pool:
        for data in (image_bytes("JPEG", 1), image_bytes("PNG", 2), animated_gif(5)):
            here, there = decode(data, PREP, Limits()), pool.decode(data, PREP, Limits())
            np.testing.assert_array_equal(here.pixels, there.pixels)
            assert (here.labels, here.pdq, here.notes) == (there.labels, there.pdq, there.notes)
        assert pool.decode(b"not an image", PREP, Limits()).startswith("unsupported format")


@pytest.mark.parametrize("hook", ["crash", "hang"])
def test_a_crashing_or_hanging_decoder_costs_one_worker(monkeypatch, hook):
    monkeypatch.setenv(TEST_HOOK, hook)
    with DecoderPool(1, timeout_s=2) as pool:
        started = time.monotonic()
        reason = pool.decode(POISON, PREP, Limits())
        assert ("crashed" in reason and "signal" in reason) if hook == "crash" else "longer than 2 s" in reason
        assert time.monotonic() - started < 30
        assert pool.replaced == 1
        after = pool.decode(image_bytes("PNG", 3), PREP, Limits())  # a fresh worker
        assert not isinstance(after, str) and after.pixels.shape == (1, 3, 32, 32)


def test_a_scan_survives_a_file_that_crashes_the_decoder(tmp_path, tiny_bundle_master):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.png").write_bytes(image_bytes("PNG", 1))
    (tree / "crash-file").write_bytes(POISON)
    (tree / "b.jpg").write_bytes(image_bytes("JPEG", 2))
    proc = run_cli(
        "scan", str(tree), "--model", str(tiny_bundle_master), "--dry-run", "--json",
        "--state", str(tmp_path / "state.db"), env={TEST_HOOK: "crash"},
    )  # fmt: skip
    summary = json.loads(proc.stdout)
    assert summary["scanned"] == 2 and summary["errors"] == 1, proc.stdout + proc.stderr
    (error,) = [
        json.loads(line)
        for line in run_cli("report", "--errors", "--state", str(tmp_path / "state.db")).stdout.splitlines()
    ]
    assert error["path"].endswith("crash-file") and "decoder crashed" in error["reason"]


def test_junk_is_rejected_without_a_decoder_process_and_images_never_are():
    from mirror_scan.scan.decoders.decode import quick_reject

    from .mediafiles import GOOD, psd, video
    from .test_formats import signal

    for name, make in GOOD.items():
        assert quick_reject(make()) is None, name
    for fmt in ("TIFF", "BMP", "ICO", "HEIF", "JPEG2000", "QOI", "TGA", "PCX", "PPM", "SGI", "DDS", "IM", "SPIDER"):
        assert quick_reject(image_bytes(fmt, 1)) is None, fmt
    assert quick_reject(psd(signal())) is None and quick_reject(video("mp4", "mpeg4")) is None
    for junk in (b"just some text, not an image\n" * 20, np.random.default_rng(1).bytes(5000), b""):
        assert quick_reject(junk) == decode(junk, PREP, Limits())
    assert quick_reject(b"{}") is None  # a header parser failed oddly: the decoder process gives the reason
