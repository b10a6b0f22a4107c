"""What browsers show, scored (issue 25): damaged and edge-case files made in code (tests/oddfiles.py) go
through the real scan (decoder worker pool, deadlines) with no file an error; where the damage matters to
what is seen, the picture a browser would show is the one that reaches the model (a calibrated probe
policy flags it, test_formats.Probe)."""

from __future__ import annotations

import io
import json

import numpy as np

from mirror_scan.model.synthetic import generated_image
from mirror_scan.scan.decoders import gifclip

from . import avifgen, oddfiles
from .conftest import run_cli
from .test_formats import background, probe, signal  # noqa: F401 - the probe fixture

PICTRS_FORMATS = ("png", "apng", "gif", "jpeg", "mpo", "webp", "avif", "jxl")


def test_every_odd_file_a_browser_shows_is_scored(tmp_path, tiny_bundle_master, flag_all):
    tree = tmp_path / "odd"
    tree.mkdir()
    from mirror_scan.scan.decoders import jxlsalvage

    files = {**oddfiles.corpus(), **avifgen.corpus()}
    if not jxlsalvage.available():  # scripts/install.sh installs libjxl0.7; test_a_cut_jxl... says it is missing
        files = {name: data for name, data in files.items() if not name.startswith("jxl-")}
    for name, data in files.items():
        (tree / name).write_bytes(data)
    state = ("--state", str(tmp_path / "state.db"))
    proc = run_cli("scan", str(tree), "--model", str(tiny_bundle_master), "--policy", str(flag_all), "--dry-run",
                   "--json", *state)  # fmt: skip
    summary = json.loads(proc.stdout)
    assert summary["errors"] == 0 and summary["scanned"] == len(files), proc.stdout + proc.stderr
    listed = {
        r["path"].rsplit("/", 1)[1]: r
        for r in map(json.loads, run_cli("report", "--errors", *state).stdout.splitlines())
    }
    # Scored, and said: each damaged file is listed with what was done about it.
    for name in ("apng-out-of-sequence.png", "apng-missing-fdat.png", "apng-repeated-fctl.png"):
        assert listed[name]["status"] == "scored" and "its default image was scored" in listed[name]["reason"], listed[
            name
        ]
    # Chromium grows the canvas to hold a GIF's first frame (measured: a 100x100 screen whose frame claims
    # 4000x3000 loads as 4000x3000 with the rows that arrived; a 120x90 screen with a 120x900 frame as
    # 120x900) and refuses one claiming 40000x30000: those are clipped to the screen here and scored.
    assert "3 of 3000 rows arrived" in listed["gif-frame-beyond-canvas.gif"]["reason"]
    assert "gif-interlaced-beyond-canvas.gif" not in listed  # scored whole, nothing to say
    for name in ("gif-frame-far-beyond-canvas.gif", "gif-interlaced-far-beyond-canvas.gif"):
        assert "clipped to it" in listed[name]["reason"], listed[name]
    every = {r["path"].rsplit("/", 1)[1]: r for r in map(json.loads, run_cli("report", *state).stdout.splitlines())}
    assert all(r["status"] == "scored" for r in every.values()), every
    assert "metadata skipped (zTXt)" in every["png-huge-text.png"]["reason"]
    assert "picture 2 lies outside the file" in every["ultra-hdr-short.jpg"]["reason"]
    for name in ("jxl-cut.jxl", "jxl-lossless-cut.jxl"):
        assert name not in files or "libjxl: what arrived drawn progressively" in listed[name]["reason"], listed[name]
    for name in ("webp-cut.webp", "webp-lossless-cut.webp"):
        assert "rows arrived, decoded as browsers draw them" in listed[name]["reason"], listed[name]
    # AVIF that libavif refuses: scored by the second decoder, and said.
    for name in ("avif-grid-shared-tiles.avif", "avif-no-ispe.avif", "avif-gain-map-primary.avif", "avif-pyramid.avif",
                 "avif-overlay.avif", "avif-irot-nonessential.avif", "avif-unknown-essential.avif"):  # fmt: skip
        assert "decoded by FFmpeg's libdav1d" in listed[name]["reason"], listed[name]
    assert "avif-grid.avif" not in listed and "avif-gain-map.avif" not in listed  # libavif takes these itself
    # Nothing a viewer shows in pict-rs's formats is left unscored.
    unscored = [n for n, r in every.items() if r["status"] != "scored" and n.rsplit(".", 1)[-1] in PICTRS_FORMATS]
    assert unscored == []


def test_a_broken_apngs_default_image_reaches_the_model(probe):  # noqa: F811
    whole = oddfiles.apng_bytes(images=[signal(), background(), background()])
    broken = oddfiles.apng_out_of_sequence(images=[signal(), background(), background()])
    for data in (whole, broken):
        verdict, decoded = probe.verdict(data)
        assert verdict.flagged, decoded.notes
    assert decoded.partial and "default image" in decoded.notes[0]
    plain, _ = probe.verdict(oddfiles.apng_out_of_sequence(images=[background(), background(), signal()]))
    assert not plain.flagged  # only the default image is shown by browsers, and scored


def test_gif_frames_beyond_the_canvas_are_clipped_as_browsers_clip_them(probe):  # noqa: F811
    # A first frame larger than the screen grows the canvas (Chromium, measured: a 96x64 screen whose frame
    # claims 96x3000 loads as 96x3000, its 64 rows that arrived at the top, the rest transparent). The
    # signal is a strip at the top of a tall transparent picture: the model's centre crop would miss it,
    # so the opaque part is scored on its own too (frames.VISIBLE_SHARE).
    verdict, decoded = probe.verdict(oddfiles.gif_claiming([signal()], 0, (96, 3000)))
    assert verdict.flagged and "visible part" in decoded.labels, decoded.labels
    assert any("64 of 3000 rows arrived" in n for n in decoded.notes), decoded.notes
    plain, _ = probe.verdict(oddfiles.gif_claiming([background()], 0, (96, 3000)))
    assert not plain.flagged
    # Later frames never grow the canvas: clipped to it (Chromium loads this one as 96x64).
    frames = [signal(), generated_image(3, 96, 64), generated_image(4, 96, 64)]
    verdict, decoded = probe.verdict(oddfiles.gif_claiming(frames, 1, (40000, 30000)))  # a "bomb" by its extents
    assert verdict.flagged and any("clipped" in n for n in decoded.notes), decoded.notes


def test_a_gif_first_frame_far_beyond_its_screen_is_drawn_at_its_origin(probe):  # noqa: F811
    # Placed at 9000,9000 on a 96x64 screen, the canvas that holds it (~82 M pixels) is over the pixel limit:
    # the frame is scored at the origin (the same picture, without the empty space), not dropped.
    data = bytearray(oddfiles.gif_claiming([signal()], 0, (96, 64)))
    first = oddfiles._descriptors(bytes(data))[0]
    data[first + 1 : first + 5] = (9000).to_bytes(2, "little") * 2
    assert gifclip.layout(bytes(data), 64_000_000).moved == first
    verdict, decoded = probe.verdict(bytes(data))
    assert verdict.flagged and decoded.labels == ["image"], (decoded.labels, decoded.notes)
    clipped, count = gifclip.clip_frames(bytes(data), 64_000_000)
    assert count == 1 and clipped[first + 1 : first + 5] == bytes(4)


def test_interlaced_gif_frames_beyond_the_canvas_are_clipped_too(probe):  # noqa: F811
    # An interlaced frame stores its rows in four passes, so the canvas's rows are spread through the whole
    # stream: a frame beyond a canvas that cannot grow to hold it (a later frame, or a first one whose
    # canvas would be over the pixel limit: here a limit of 96x64x4) is decoded here (gifclip), its visible
    # rows kept. The signal fills the 96x64 screen and the frame goes on for 3000 rows of background.
    from PIL import Image

    tall = Image.new("RGB", (96, 3000), (90, 90, 90))
    tall.paste(signal(), (0, 0))
    data = oddfiles.gif_interlaced_beyond_canvas(tall, (96, 64))
    assert gifclip.canvas(data, 64_000_000) == (96, 3000)  # as Chromium draws it: grown, nothing clipped
    clipped, count = gifclip.clip_frames(data, 96 * 64 * 4)
    shown = np.asarray(Image.open(io.BytesIO(clipped)).convert("RGB")).astype(int)
    whole = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)[:64]  # Pillow, unclipped
    assert count == 1 and shown.shape == (64, 96, 3) and (shown == whole).all()  # the very rows, in place
    # Claimed extents of 40000x30000 over the data of a 96x64 frame (Chromium refuses it): no bomb, the rows
    # that came are drawn and scored.
    verdict, decoded = probe.verdict(oddfiles.gif_interlaced_beyond_canvas(signal(), (96, 64), (40000, 30000)))
    assert not isinstance(decoded, str) and any("clipped" in n for n in decoded.notes), decoded


def test_avif_that_libavif_refuses_reaches_the_model_whole(probe):  # noqa: F811
    picture = np.asarray(signal())
    for data in (avifgen.single(picture, drop_ispe=True), avifgen.gainmap(picture, primary_is_tmap=True)):
        verdict, decoded = probe.verdict(data)
        assert verdict.flagged and decoded.partial and "libdav1d" in decoded.notes[0], decoded.notes
    verdict, _ = probe.verdict(avifgen.single(np.asarray(background()), drop_ispe=True))
    assert not verdict.flagged  # the second decoder gives the picture, not a verdict


def test_an_avif_neither_decoder_can_read_is_an_error_with_both_reasons(probe):  # noqa: F811
    from mirror_scan.scan.decoders.decode import decode

    data = bytearray(avifgen.single(np.asarray(background()), drop_ispe=True))
    mdat = data.rindex(b"mdat")
    data[mdat + 4 :] = bytes(len(data) - mdat - 4)  # the AV1 data zeroed
    reason = decode(bytes(data), probe.prep)
    assert isinstance(reason, str) and "libdav1d could not decode it either" in reason, reason
    bomb = avifgen.grid(avifgen.pattern(128, 128), out_size=(60000, 60000))
    reason = decode(bomb, probe.prep)
    assert isinstance(reason, str) and ("pixels" in reason or "bomb" in reason), reason


def test_a_cut_webps_rows_that_arrived_are_the_pictures_rows(probe):  # noqa: F811
    # Pillow decodes a WebP whole or not at all; the rows a browser draws from a cut file are scored.
    import io

    from PIL import Image

    from mirror_scan.scan.decoders.webpsalvage import salvage

    for lossless in (False, True):
        whole = oddfiles.webp_cut(lossless=lossless, keep=1.0)
        reference = np.asarray(Image.open(io.BytesIO(whole)).convert("RGB")).astype(int)
        cut = oddfiles.webp_cut(lossless=lossless, keep=0.85)
        img, arrived, height = salvage(cut, 10**8)
        drawn = np.asarray(img).astype(int)
        assert 0 < arrived < height == reference.shape[0]
        assert np.abs(drawn[:arrived] - reference[:arrived]).max() <= 2  # the picture's own rows
        assert (drawn[arrived:] == 128).all()  # the rest: neutral grey, as nothing arrived there
        verdict, decoded = probe.verdict(cut)
        assert decoded.partial and f"{arrived} of {height} rows arrived" in decoded.notes[0], decoded.notes


def test_a_cut_animated_webp_is_scored_on_the_frames_that_arrived(probe):  # noqa: F811
    from PIL import Image

    from mirror_scan.scan.decoders.webpsalvage import first_frame_still, salvage

    frames = [background(), signal(), generated_image(5, 96, 64)]
    verdict, decoded = probe.verdict(oddfiles.webp_animated_cut(frames, cut_in=2))
    assert verdict.flagged and decoded.partial and "2 frames that arrived whole" in decoded.notes[0], decoded.notes
    hidden = [background(), generated_image(5, 96, 64), signal()]
    verdict, decoded = probe.verdict(oddfiles.webp_animated_cut(hidden, cut_in=2, keep=0.3))
    assert not verdict.flagged and "the cut one was not" in decoded.notes[0]  # never shown, never scored
    # Cut inside the first frame: its rows that arrived, drawn as a still's.
    for lossless in (False, True):
        whole = oddfiles.webp_animated([signal(), background()], lossless=lossless)
        first = np.asarray(Image.open(io.BytesIO(whole)).convert("RGB")).astype(int)
        cut = oddfiles.webp_animated_cut([signal(), background()], cut_in=0, keep=0.8, lossless=lossless)
        img, arrived, height = salvage(first_frame_still(cut), 10**8)
        drawn = np.asarray(img).astype(int)
        assert 0 < arrived < height == first.shape[0]
        assert np.abs(drawn[:arrived] - first[:arrived]).max() <= 2 and (drawn[arrived:] == 128).all()
        reason = probe.verdict(cut)[1].notes[0]
        assert "cut short in its first frame" in reason and "rows arrived" in reason, reason


def test_a_cut_jpeg_xl_is_scored_on_what_arrived(probe):  # noqa: F811
    import pytest
    from PIL import Image

    from mirror_scan.scan.decoders import jxlsalvage

    if not jxlsalvage.available():
        pytest.skip("libjxl is missing (scripts/install.sh installs Debian's libjxl0.7)")
    big = signal().resize((768, 512), Image.Resampling.BICUBIC)  # a lossless file draws group by group (256 px)
    for lossless, keep in ((False, 0.7), (True, 0.9)):
        whole = oddfiles.jxl_cut(lossless=lossless, keep=1.0, image=big)
        img, complete = jxlsalvage.salvage(whole, 10**8)
        reference = np.asarray(Image.open(io.BytesIO(whole)).convert("RGB")).astype(int)
        assert complete and np.abs(np.asarray(img).astype(int) - reference).max() <= 2  # libjxl == Pillow's plugin
        cut = oddfiles.jxl_cut(lossless=lossless, keep=keep, image=big)
        img, complete = jxlsalvage.salvage(cut, 10**8)
        assert not complete and img.size == (768, 512)
        verdict, decoded = probe.verdict(cut)
        assert decoded.partial and "drawn progressively" in decoded.notes[0], decoded.notes
        if not lossless:  # the DC image and part of the detail: the picture, blurred
            assert verdict.flagged, decoded.notes
    assert jxlsalvage.salvage(oddfiles.jxl_cut(keep=0.02, image=big), 10**8) is None  # nothing of the picture yet


def _gif(canvas, frames, colours: int = 256, control: bytes = b"") -> bytes:
    """A GIF written by hand: frames as (left, top, width, height, flags, LZW minimum code size, data)."""
    import struct

    bits = (colours - 1).bit_length() - 1
    out = b"GIF89a" + struct.pack("<HHBBB", *canvas, 0xF0 | bits, 0, 0) + bytes(3 * colours)
    for left, top, width, height, flags, min_code, data in frames:
        blocks = b"".join(bytes([len(data[i : i + 255])]) + data[i : i + 255] for i in range(0, len(data), 255))
        out += control + b"\x2c" + struct.pack("<HHHHB", left, top, width, height, flags) + bytes([min_code])
        out += blocks + b"\x00"
    return out + b"\x3b"


def test_gif_frames_the_canvas_never_shows_cost_nothing(probe):  # noqa: F811
    # Found by attacking gifclip: frames that would make Pillow grow the picture, or make the clipping
    # write gigabytes, from files of a few hundred bytes.
    from PIL import Image

    from mirror_scan.scan.decoders.decode import decode

    # Nothing of the visible rows arrived (an empty stream), on a canvas at the pixel limit, 200 times over.
    for frames in ([(0, 0, 8000, 65535, 0x40, 8, b"")], [(0, 0, 2000, 65535, 0x40, 8, b"")] * 200):
        reason = decode(_gif((8000, 8000) if len(frames) == 1 else (2000, 2000), frames), probe.prep)
        assert isinstance(reason, str) and "nothing a browser would draw" in reason, reason
    # A frame wholly outside the canvas is never shown: dropped, the picture stays the canvas.
    buf = io.BytesIO()
    background().save(buf, format="GIF", save_all=True, append_images=[signal()], duration=100, interlace=False)
    data = bytearray(buf.getvalue())
    second = oddfiles._descriptors(bytes(data))[1]
    data[second + 1 : second + 5] = (9000).to_bytes(2, "little") * 2  # left, top: far outside the 96x64 canvas
    clipped, count = gifclip.clip_frames(bytes(data), 10**8)
    img = Image.open(io.BytesIO(clipped))
    assert count == 1 and img.size == (96, 64) and getattr(img, "n_frames", 1) == 1
    verdict, decoded = probe.verdict(bytes(data))
    assert not verdict.flagged and decoded.partial  # the signal is never on screen
    # A frame of no width but 65,535 rows (Pillow would grow the picture to them), and a clipped frame hidden
    # behind stray bytes (Pillow skips them and reads on): neither grows the picture.
    empty = bytearray(buf.getvalue())
    at = oddfiles._descriptors(bytes(empty))[1]
    empty[at + 5 : at + 9] = (0).to_bytes(2, "little") + (65535).to_bytes(2, "little")
    clipped, _ = gifclip.clip_frames(bytes(empty), 10**8)
    assert Image.open(io.BytesIO(clipped)).size == (96, 64) and not isinstance(decode(bytes(empty), probe.prep), str)
    tall = oddfiles.gif_interlaced_beyond_canvas(Image.new("RGB", (96, 3000), (90, 90, 90)), (96, 64))
    first = oddfiles._descriptors(tall)[0]
    clipped, count = gifclip.clip_frames(tall[:first] + b"\x55\x55" + tall[first:], 96 * 64 * 4)
    assert count == 1 and Image.open(io.BytesIO(clipped)).size == (96, 64)
    # A first frame too wide for the screen (stored row by row) grows the canvas to 3000x64 (Chromium); where
    # that canvas is over the limit it is written again clipped, and the signal is the picture.
    wide = Image.new("RGB", (3000, 64), (90, 90, 90))
    wide.paste(signal(), (0, 0))
    buf = io.BytesIO()
    wide.quantize(64).save(buf, format="GIF", interlace=False)
    data = bytearray(buf.getvalue())
    data[6:10] = (96).to_bytes(2, "little") + (64).to_bytes(2, "little")
    assert gifclip.canvas(bytes(data), 64_000_000) == (3000, 64)
    clipped, count = gifclip.clip_frames(bytes(data), 96 * 64 * 4)
    shown = np.asarray(Image.open(io.BytesIO(clipped)).convert("RGB")).astype(int)
    whole = np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB")).astype(int)[:, :96]  # Pillow, unclipped
    assert count == 1 and shown.shape == (64, 96, 3) and (shown == whole).all()


def test_a_clipped_frames_transparent_holes_keep_any_index():
    # The transparent index fills interlaced rows that never came; 200 does not fit a 2-bit code (the
    # frame's own minimum code size): the frame is written again with 9-bit codes, and decodes strictly.
    from PIL import Image

    from .oddfiles import gif_interlaced_beyond_canvas

    data = bytearray(gif_interlaced_beyond_canvas(Image.new("RGB", (16, 40), (200, 30, 30)), (16, 16)))
    at = oddfiles._descriptors(bytes(data))[0]
    control = b"\x21\xf9\x04\x01\x00\x00\xc8\x00"  # transparent colour 200
    data[at:at] = control
    cut = bytes(data[: len(data) - 6]) + b"\x00\x3b"  # the stream cut short: some rows never arrive
    clipped, count = gifclip.clip_frames(cut, 16 * 16 * 2)  # the 16x40 canvas that holds it is over this limit
    assert count == 1
    img = Image.open(io.BytesIO(clipped))
    img.load()  # strict: the rewritten stream is valid
    assert img.size == (16, 16) and img.info.get("transparency") == 200


def test_a_cut_first_frame_that_declares_4_gib_is_not_drawn():
    from mirror_scan.scan.decoders.webpsalvage import first_frame_still

    pictures = [oddfiles.picture(17, (160, 120)), oddfiles.picture(18, (160, 120))]
    data = bytearray(oddfiles.webp_animated_cut(pictures, cut_in=0, keep=0.7))
    start, _ = oddfiles.webp_frame_offsets(bytes(data))[0]
    inner = start + 8 + 16  # the frame's first chunk (after the ANMF header's 16 bytes)
    data[inner + 4 : inner + 8] = b"\xff\xff\xff\xff"
    assert first_frame_still(bytes(data)) is None


def test_bmp_layouts_pillow_refuses_are_read_as_browsers_draw_them(probe):  # noqa: F811
    # The BMP Suite's files that Chrome and Firefox draw and Pillow refuses (bit fields in any order and
    # width, the alpha mask after the header, 2-bit palettes), made here from a picture: read exactly.
    import pytest

    from mirror_scan.scan.decoders.bmpread import BmpRefused, read_bmp

    picture = oddfiles.picture(25, (127, 64))
    expected = np.asarray(picture, dtype=np.int32)
    layouts = [((0xFFE00000, 0x001FFC00, 0x3FF, 0), 32, False), ((0xFF0000, 0xFF00, 0xFF, 0), 32, False),
               ((0xF00, 0xF0, 0xF, 0xF000), 16, False), ((0xFF00, 0xFF0000, 0xFF000000, 0xFF), 32, True),
               ((0x30, 0xE, 0x1, 0), 16, False)]  # fmt: skip
    for masks, depth, alpha in layouts:
        img = read_bmp(oddfiles.bmp_bitfields(picture, masks, depth, alpha), 10**8)
        got = np.asarray(img.convert("RGB"), dtype=np.int32)
        step = max(255 / ((m & -m) and m // (m & -m)) for m in masks[:3])  # the coarsest channel's step
        assert img.size == (127, 64) and np.abs(got - expected).max() <= step / 2 + 1, masks
    grey = np.asarray(read_bmp(oddfiles.bmp_two_bit(picture), 10**8).convert("L"), dtype=np.int32)
    assert np.abs(grey - np.asarray(picture.convert("L"), dtype=np.int32)).max() <= 64
    tall = bytearray(oddfiles.bmp_two_bit(picture))
    tall[22:26] = (10**6).to_bytes(4, "little", signed=True)  # claims a million rows: not there, refused
    with pytest.raises(BmpRefused):
        read_bmp(bytes(tall), 10**9)
    with pytest.raises(BmpRefused):
        read_bmp(oddfiles.bmp_bitfields(picture, (0xFF0000, 0xFF00, 0xFF, 0)), 1000)  # over the pixel limit
    data = oddfiles.bmp_bitfields(signal(), (0xFFE00000, 0x001FFC00, 0x3FF, 0))
    verdict, decoded = probe.verdict(data)
    assert verdict.flagged and decoded.partial and "read by the BMP reader" in decoded.notes[0], decoded.notes


def test_a_cut_run_length_bmp_is_drawn_as_far_as_its_runs_go():
    # Pillow reads a whole RLE8 BMP and refuses a cut one; the reader draws the same pixels, then as far as
    # the runs go, the rest transparent (as browsers leave it).
    from PIL import Image

    from mirror_scan.scan.decoders.bmpread import read_bmp

    picture = oddfiles.picture(27, (127, 64))
    whole = oddfiles.bmp_rle8(picture)
    reference = np.asarray(Image.open(io.BytesIO(whole)).convert("RGB"))
    mine = np.asarray(read_bmp(whole, 10**8))
    assert (mine[..., 3] == 255).all() and (mine[..., :3] == reference).all()
    cut = np.asarray(read_bmp(oddfiles.bmp_rle8(picture, keep=0.5), 10**8))
    drawn = cut[..., 3] == 255
    assert 0.3 < drawn.mean() < 0.7 and drawn[-1].all() and not drawn[0].any()  # bottom-up: the bottom arrived
    assert (cut[..., :3][drawn] == reference[drawn]).all()
