"""Nothing a viewer can see goes unscanned: every format, multi-picture JPEGs, truncated files, every
distinct frame, every pixel (coverage "full"), content under transparency.

Verdicts are driven through a policy calibrated on the tiny random-weight model: a "signal" picture and
a "background" picture are scored alone, and a threshold between them flags only rows that show the
signal. A file is then flagged only if the odd frame, picture, tile or hidden layer really reached the
model; the same file without it is the control and stays clean.
"""

from __future__ import annotations

import io
import json
import zlib

import numpy as np
import pytest
from PIL import Image

from mirror_scan.model.bundle import load_bundle
from mirror_scan.model.scoring import Scorer, columns
from mirror_scan.model.synthetic import generated_image
from mirror_scan.policy.load import parse_policy
from mirror_scan.scan.decide import annotate, decide, reason_text
from mirror_scan.scan.decoders.decode import Decoded, Limits, decode, decode_detail

from .conftest import run_cli
from .mediafiles import gif, image_bytes, jpeg, multi_picture_jpeg, psd, video_of

SIGNAL_SEED, BACKGROUND_SEED = 2, 1
GREY = (128, 128, 128)
GAIN_MAP_XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/" hdrgm:Version="1.0"/></x:xmpmeta>'  # noqa: E501


class Probe:
    """The tiny bundle, and a policy that flags the signal picture and nothing like the background."""

    def __init__(self, bundle_dir) -> None:
        self.bundle = load_bundle(bundle_dir)
        self.scorer = Scorer(self.bundle, device="cpu", precision="fp32")
        self.prep = self.bundle.preprocess

    def sims(self, decoded: Decoded) -> np.ndarray:
        return self.scorer(decoded.pixels)[1]

    def calibrate(self, signal: Image.Image, backgrounds: list[Image.Image]) -> None:
        signal_sims = self.sims(decode(_png(signal), self.prep))[0]
        background_sims = np.max([self.sims(decode(_png(img), self.prep))[0] for img in backgrounds], axis=0)
        gap = signal_sims - background_sims
        best = int(np.argmax(gap))
        assert gap[best] > 0.005, "the tiny model cannot tell the signal from the background"
        prompt = self.bundle.concepts.prompts[best]
        # Nearer the background than the signal: compression and palettes move similarities a little.
        threshold = float(background_sims[best] + gap[best] * 0.35)
        self.policy = parse_policy(
            "calibrated",
            {"rule": "groups", "groups": {"any": {prompt: threshold}}, "parameters": {"flag_when": {"any": 1}}},
        )
        self.columns = columns(self.bundle.concepts.prompts, self.policy)

    def verdict(self, data: bytes, limits: Limits | None = None):
        decoded = decode(data, self.prep, limits or Limits())
        assert not isinstance(decoded, str), decoded
        sims = self.sims(decoded)[:, self.columns]
        (verdict,) = decide(self.policy, sims, [len(sims)], 0.0)
        return annotate(verdict, decode_detail(decoded)), decoded


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def probe(tiny_bundle_master):
    probe = Probe(tiny_bundle_master)
    backgrounds = [
        generated_image(BACKGROUND_SEED, 96, 64),
        generated_image(BACKGROUND_SEED, 48, 32),
        generated_image(BACKGROUND_SEED, 80, 60),
        Image.new("RGB", (96, 96), GREY),
    ]
    probe.calibrate(generated_image(SIGNAL_SEED, 96, 64), backgrounds)
    return probe


def signal(width=96, height=64):
    return generated_image(SIGNAL_SEED, width, height)


def background(width=96, height=64):
    return generated_image(BACKGROUND_SEED, width, height)


def test_calibration_flags_the_signal_and_not_the_background(probe):
    assert probe.verdict(_png(signal()))[0].flagged
    assert not probe.verdict(_png(background()))[0].flagged


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "fmt", ["TIFF", "BMP", "ICO", "HEIF", "AVIF", "JPEG2000", "QOI", "TGA", "PCX", "PPM", "SGI", "DDS", "JXL"]
)
def test_every_still_format_pillow_reads_is_scored(probe, fmt):
    verdict, decoded = probe.verdict(image_bytes(fmt, SIGNAL_SEED, size=(96, 64)))
    assert decoded.format == {"JPEG2000": "jpeg2000"}.get(fmt, fmt.lower())
    assert verdict.flagged, f"{fmt}: the picture did not reach the model intact"
    assert not probe.verdict(image_bytes(fmt, BACKGROUND_SEED, size=(96, 64)))[0].flagged


def test_photoshop_files_are_scored(probe):
    verdict, decoded = probe.verdict(psd(signal()))
    assert decoded.format == "psd" and verdict.flagged
    assert not probe.verdict(psd(background()))[0].flagged


def test_eps_is_never_handed_to_ghostscript(probe):
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert decode(eps, probe.prep).startswith("unsupported format")


# ---------------------------------------------------------------- multi-picture JPEGs


def test_mpo_second_picture_is_scored(probe):
    """A stereo/MPO file: the signal only in the second picture."""
    data = multi_picture_jpeg([jpeg(background()), jpeg(signal())])
    verdict, decoded = probe.verdict(data)
    assert decoded.format == "mpo" and len(decoded.pixels) == 2
    assert verdict.flagged and verdict.reason["where"] == "picture 2 (Undefined)"
    control = multi_picture_jpeg([jpeg(background()), jpeg(background(80, 60))])
    assert not probe.verdict(control)[0].flagged


def test_ultra_hdr_primary_is_scored_and_the_gain_map_is_not(probe):
    """Ultra HDR: the primary picture plus a gain map after it (XMP hdrgm). The gain map is skipped, and
    the reason says so; the primary is what a viewer shows."""
    gain_map = jpeg(signal(48, 32).convert("L"), xmp=GAIN_MAP_XMP)
    verdict, decoded = probe.verdict(multi_picture_jpeg([jpeg(signal()), gain_map]))
    assert verdict.flagged and verdict.reason["where"].startswith("picture 1")
    assert decoded.labels == ["picture 1 (Baseline MP Primary Image)"]
    assert "picture 2 (gain map)" in " ".join(decoded.notes)
    # The gain map (here carrying the signal) never decides the verdict.
    clean, _ = probe.verdict(multi_picture_jpeg([jpeg(background()), gain_map]))
    assert not clean.flagged and "gain map" in reason_text(clean.reason)


def test_a_phone_photo_in_draft_mode_decodes(probe):
    """The old failure: draft mode plus seeking to the second picture said 'truncated'."""
    big = multi_picture_jpeg([jpeg(generated_image(5, 1600, 1200)), jpeg(generated_image(6, 800, 600))])
    decoded = decode(big, probe.prep)
    assert not isinstance(decoded, str), decoded
    assert len(decoded.pixels) == 2 and not decoded.partial


# ---------------------------------------------------------------- truncated files


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "TIFF"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_files_are_scored_on_what_decodes(probe, fmt, keep):
    full = image_bytes(fmt, SIGNAL_SEED, size=(320, 240))
    decoded = decode(full[: int(len(full) * keep)], probe.prep)
    assert not isinstance(decoded, str), decoded
    assert decoded.partial and decoded.notes[0].startswith("partial")


def test_truncated_signal_still_flags_when_its_part_arrived(probe):
    """The top 90% of the signal arrived: scored and flagged, and the reason says partial."""
    data = image_bytes("PNG", SIGNAL_SEED, size=(96, 64))
    verdict, decoded = probe.verdict(data[: int(len(data) * 0.95)])
    assert decoded.partial and verdict.flagged and verdict.reason["partial"] is True
    assert "partial" in reason_text(verdict.reason)


def test_files_that_yield_no_pixels_stay_errors(probe):
    jpeg_bytes = image_bytes("JPEG", 1)
    header_only = jpeg_bytes[: jpeg_bytes.index(b"\xff\xda") + 2]  # cut at the start of scan
    for data in (header_only, image_bytes("PNG", 1)[:40], b"GIF89a\x10\x00", b"\x00" * 100, b"not an image"):
        assert isinstance(decode(data, probe.prep), str)


# ---------------------------------------------------------------- frames


def _ticking(base: Image.Image, count: int) -> list[Image.Image]:
    """A long animation of one picture with a tiny change per frame (so the encoder keeps every frame)."""
    frames = []
    for i in range(count):
        frame = base.copy()
        frame.putpixel((i % base.width, (i // base.width) % base.height), (255, 255, 255))
        frames.append(frame)
    return frames


def test_one_odd_frame_in_a_thousand_reaches_the_model(probe):
    frames = _ticking(background(), 1000)
    control = gif(frames)
    frames[700] = signal()
    verdict, decoded = probe.verdict(gif(frames))
    assert decoded.total_frames == 1000
    assert len(decoded.pixels) <= 8, "near-duplicate frames must not each cost an inference"
    assert verdict.flagged and verdict.reason["where"] == "frame 701"
    assert not probe.verdict(control)[0].flagged


def test_a_frame_cap_keeps_the_most_different_frames_and_says_so(probe):
    frames = [generated_image(100 + i, 96, 64) for i in range(40)]  # 40 distinct pictures
    frames[33] = signal()
    verdict, decoded = probe.verdict(gif(frames), Limits(max_frames=8))
    assert len(decoded.pixels) == 8
    assert any("frame cap: 8 of" in note for note in decoded.notes)
    assert "frame cap" in reason_text(verdict.reason)


def test_a_short_segment_in_a_video_reaches_the_model(probe):
    """20 s at 10 frames/s with one keyframe: a 1 s segment in the middle is found by decoding every
    frame and keeping the scene changes."""
    frames = [background()] * 200
    control = video_of(frames)
    frames[120:130] = [signal()] * 10
    verdict, decoded = probe.verdict(video_of(frames))
    assert decoded.total_frames == 200 and len(decoded.pixels) <= 10
    assert verdict.flagged and verdict.reason["where"].startswith("frame 12")
    assert not probe.verdict(control)[0].flagged


def test_long_videos_are_read_by_keyframes_and_say_so(probe):
    decoded = decode(video_of([background()] * 60), probe.prep, Limits(max_decoded_frames=20))
    assert any("keyframes only" in note for note in decoded.notes)


# ---------------------------------------------------------------- coverage and transparency


def test_full_coverage_scores_the_ends_of_a_banner(probe):
    banner = Image.new("RGB", (384, 96), GREY)
    banner.paste(signal(96, 96), (0, 0))  # the signal only in the leftmost quarter
    data = _png(banner)
    centre, decoded = probe.verdict(data)
    assert len(decoded.pixels) == 1 and not centre.flagged  # the centre crop never sees the left end
    full, decoded = probe.verdict(data, Limits(coverage="full"))
    assert len(decoded.pixels) == 1 + 4
    assert full.flagged and full.reason["where"] == "tile 1/4"


def test_full_coverage_of_a_very_long_strip_is_capped_and_covers_everything(probe):
    strip = Image.new("RGB", (40 * 64, 64), (90, 90, 90))
    decoded = decode(_png(strip), probe.prep, Limits(coverage="full", max_tiles=16))
    assert len(decoded.pixels) == 1 + 16 and any("squashed" in note for note in decoded.notes)


def test_content_under_transparent_alpha_is_scored_with_alpha_ignored(probe):
    rgba = signal().convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 0))  # fully transparent: a viewer shows nothing...
    verdict, decoded = probe.verdict(_png(rgba))
    assert decoded.labels == ["image", "alpha ignored"]
    assert verdict.flagged and verdict.reason["where"] == "alpha ignored"  # ...but the bytes hold the picture
    logo = Image.new("RGBA", (96, 64), (0, 0, 0, 0))  # an ordinary transparent logo: one row only
    logo.paste(background(32, 32), (32, 16))
    assert len(decode(_png(logo), probe.prep).pixels) == 1


def test_a_picture_on_a_large_transparent_canvas_is_scored_as_shown(probe):
    # A viewer shows the picture in a strip or a corner of a transparent canvas; the model's centre crop
    # would miss the strip and shrink the corner to a few pixels, so the opaque part is scored on its own.
    for size, at in (((96, 1500), (0, 0)), ((1200, 800), (1100, 730))):
        canvas = Image.new("RGBA", size, (0, 0, 0, 0))
        canvas.paste(signal(), at)
        verdict, decoded = probe.verdict(_png(canvas))
        assert verdict.flagged and verdict.reason["where"] == "visible part", (decoded.labels, verdict.reason)
        canvas.paste(background(), at)
        assert not probe.verdict(_png(canvas))[0].flagged


# ---------------------------------------------------------------- end to end


def test_scan_reports_partial_files_and_the_frame_that_flagged(tmp_path, tiny_bundle_master, probe):
    policy = dict(probe.policy.raw, name="calibrated")
    policy_path = tmp_path / "policy.json"
    policy_path.write_text(json.dumps(policy))
    tree = tmp_path / "tree"
    tree.mkdir()
    frames = _ticking(background(), 300)
    frames[150] = signal()
    (tree / "animation").write_bytes(gif(frames))
    whole = image_bytes("PNG", BACKGROUND_SEED, size=(96, 64))
    (tree / "cut-short").write_bytes(whole[: len(whole) * 2 // 3])
    (tree / "photo.heic").write_bytes(image_bytes("HEIF", BACKGROUND_SEED, size=(96, 64)))
    state = ["--state", str(tmp_path / "state.db")]
    proc = run_cli(
        "scan", str(tree), "--model", str(tiny_bundle_master), "--policy", str(policy_path), "--dry-run", "--json",
        *state,
    )  # fmt: skip
    summary = json.loads(proc.stdout)
    assert summary["scanned"] == 3 and summary["errors"] == 0 and summary["flagged"] == 1, proc.stdout + proc.stderr
    flagged = [json.loads(line) for line in run_cli("report", "--flagged", *state).stdout.splitlines()]
    assert [r["path"].rsplit("/", 1)[1] for r in flagged] == ["animation"]
    assert "[frame 151" in flagged[0]["reason"]
    listed = [json.loads(line) for line in run_cli("report", "--errors", *state).stdout.splitlines()]
    assert [r["path"].rsplit("/", 1)[1] for r in listed] == ["cut-short"]
    assert listed[0]["status"] == "scored" and "partial" in listed[0]["reason"]


# ---------------------------------------------------------------- odd bytes


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "ICO", "HEIF", "JPEG2000", "PSD", "MPO"])
def test_mangled_files_never_raise(probe, fmt):
    """Bytes flipped, cut and spliced at random: every outcome is a reason or rows, never an exception,
    and rows are finite numbers."""
    if fmt == "PSD":
        good = psd(generated_image(3, 64, 48))
    elif fmt == "MPO":
        good = multi_picture_jpeg([jpeg(generated_image(3, 64, 48)), jpeg(generated_image(4, 64, 48))])
    else:
        frames = [generated_image(3 + i, 64, 48) for i in range(3)]
        buf = io.BytesIO()
        save_all = {"save_all": True, "append_images": frames[1:]} if fmt in ("GIF", "WEBP", "TIFF") else {}
        frames[0].save(buf, format=fmt, **save_all)
        good = buf.getvalue()
    rng = np.random.default_rng(zlib.crc32(fmt.encode()))
    for trial in range(40):
        data = bytearray(good)
        if trial % 3 == 0:
            for at in rng.integers(0, len(data), size=int(rng.integers(1, 12))):
                data[at] = int(rng.integers(0, 256))
        elif trial % 3 == 1:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            at = int(rng.integers(0, len(data)))
            data = data[:at] + bytes(rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8)) + data[at:]
        decoded = decode(bytes(data), probe.prep, Limits(coverage="full"))
        if not isinstance(decoded, str):
            assert decoded.pixels.ndim == 4 and np.isfinite(decoded.pixels).all()
            assert len(decoded.pixels) == len(decoded.labels)


def test_big_animation_keeps_small_copies_and_a_row_cap(probe):
    frames = [generated_image(50 + i, 1200, 300) for i in range(12)]  # 4:1, all distinct
    decoded = decode(gif(frames), probe.prep, Limits(coverage="full", max_rows=20))
    assert len(decoded.pixels) == 20
    assert any(note.startswith("row cap: 20 of") for note in decoded.notes)
    assert decoded.labels[:12] == [f"frame {i + 1}" for i in range(12)]  # every centre crop before any tile
