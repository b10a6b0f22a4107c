"""Bytes -> model-ready rows. Whatever a viewer could display reaches the model, or the notes say why not.

Format from the bytes, never the name (old pict-rs keys have no extension): videos by their container
signature, every still and animated format that Pillow and its plugins read (JPEG, PNG/APNG, GIF, WebP,
AVIF, JPEG XL, HEIF/HEIC, TIFF, BMP, ICO, JPEG 2000, QOI, PSD, ...) by Pillow's own identification.
Every failure is returned as a reason, never raised, so one bad file cannot stop a scan, and nothing
that yields no pixels is ever acted on.

What becomes rows (each row is one model input; the file's verdict is its worst row):
- every distinct frame of an animation, multi-page TIFF or video, up to `max_frames` (near-duplicates
  skipped by a 16x16 signature, so a 1,000-frame GIF of three pictures costs three inferences); videos
  longer than `max_decoded_frames` are read by their keyframes only;
- every picture of a multi-picture JPEG (MPO, Ultra HDR) except gain and depth maps;
- per frame, the centre crop (what horde-safety's thresholds were tuned on) and, with coverage "full",
  square tiles along the long side until every pixel is in a scored crop;
- per frame with mostly transparent pixels over non-uniform colour: composited AND alpha ignored.

Truncated or partly corrupt files are decoded as far as they go ("partial" in the notes) and still
listed by `report --errors`. Bounded work: the pixel count is checked from the header before decoding,
and each frame is reduced to model size as soon as it is decoded and hashed (PDQ of the picture as
stored, the way Meta's reference hashes it: see hashes.reference_pixels).
"""

from __future__ import annotations

__all__ = ["Decoded", "DecodeFailure", "Limits", "decode", "decode_detail", "quick_reject", "sniff"]

import io
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from mirror_scan.model.bundle import Preprocess
from mirror_scan.model.preprocess import draft_scale, thumbnail

try:  # JPEG XL through the pillow-jxl plugin (registers itself with Pillow)
    import pillow_jxl  # noqa: F401
except ImportError:  # pragma: no cover - optional at runtime, installed by default
    pass
from mirror_scan.scan.decoders import gifclip, gpujpeg
from mirror_scan.scan.decoders.decoded import Decoded, DecodeFailure, Limits, clock, decode_detail
from mirror_scan.scan.decoders.frames import DistinctFrames, Rows, pdq_dihedral
from mirror_scan.scan.decoders.pngchunks import default_image, strip_metadata
from mirror_scan.scan.decoders.quiet import worker_stderr_quiet
from mirror_scan.text import one_line

try:  # HEIF/HEIC (iPhone photos) through pillow-heif
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - optional at runtime, installed by default
    pass

Image.init()
# Process-wide, set once (catch_warnings() is not thread-safe and decodes run in threads): Pillow's bomb
# warning is an error, and its remarks about odd files ("malformed MPO", "tag data larger than file") are
# not for the admin's log: what matters reaches the notes.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
# Every format Pillow can open, except EPS (Pillow runs Ghostscript on it: never on untrusted bytes).
PILLOW_FORMATS = tuple(sorted(set(Image.OPEN) - {"EPS"}))

ORIENTATION = 0x0112  # EXIF tag
VIDEO_FORMATS = ("mp4", "webm")
MP4_BRANDS = {
    b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"mp71", b"avc1", b"dash",
    b"M4V ", b"M4A ", b"f4v ", b"qt  ", b"MSNV", b"3gp4", b"3gp5", b"3g2a",
}  # fmt: skip
STILL_BRANDS = {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"mif3", b"msf1"}
TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders
GAIN_MAP_MARKERS = (b"hdrgm:", b"http://ns.adobe.com/hdr-gain-map/", b"urn:iso:std:iso:ts:21496:-1")
DEPTH_MAP_MARKERS = (b"GDepth:", b"http://ns.google.com/photos/1.0/depthmap/", b"DepthMap")


def sniff(head: bytes) -> str | None:
    """A cheap first look at the container: the formats this module names itself, else None (then Pillow's
    own identification decides)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"  # APNG is a PNG with an acTL chunk; Pillow reads both
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "jxl"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"  # Matroska/WebM EBML header
    if head[4:8] == b"ftyp":
        size = int.from_bytes(head[:4], "big")
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(size, len(head)), 4)}
        if brands & {b"avif", b"avis"}:
            return "avif"
        if brands & STILL_BRANDS:
            return "heif"
        if brands & MP4_BRANDS:
            return "mp4"
    return None


# ---------------------------------------------------------------- truncated files


class _TruncationMode:
    """Pillow reads "decode what is there" from one process-wide flag. Strict decodes share it (the
    normal case, in parallel); a lenient re-decode of a broken file takes it alone, so no strict decode
    running beside it silently turns lenient."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._strict = 0
        self._lenient = False
        self._waiting = 0  # lenient decodes waiting: new strict ones let them go first (no starvation)

    @contextmanager
    def strict(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._lenient and not self._waiting)
            self._strict += 1
        try:
            yield
        finally:
            with self._cond:
                self._strict -= 1
                self._cond.notify_all()

    @contextmanager
    def lenient(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._lenient and self._strict == 0)
            self._waiting -= 1
            self._lenient = True
            ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            with self._cond:
                ImageFile.LOAD_TRUNCATED_IMAGES = False
                self._lenient = False
                self._cond.notify_all()


_MODE = _TruncationMode()


# ---------------------------------------------------------------- one frame -> rows


class Unidentified(DecodeFailure):
    """Bytes that say they are a known format, refused by Pillow's strict open: the lenient paths try them."""


def _open(data: bytes, limits: Limits, formats: tuple[str, ...] = PILLOW_FORMATS) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        known = sniff(data[:64])
        img = _heif_by_libheif(data, limits) if known == "heif" else None
        if img is not None:
            return img
        if known is not None:  # a PNG, a GIF... whose header Pillow's strict pass refused (a bad chunk CRC)
            raise Unidentified(f"corrupt or truncated {known}: its header cannot be read") from None
        raise DecodeFailure(UNSUPPORTED) from None
    width, height = img.size
    if width < 1 or height < 1:
        raise DecodeFailure("image has no pixels")
    _check_pixels(width, height, limits)
    return img


def _heif_by_libheif(data: bytes, limits: Limits) -> Image.Image | None:
    """A HEIF that libheif decodes while its file-type check, so Pillow's plugin, refuses it: the compact
    form (brand 'mif3', a 'mini' box) and a picture without 'ispe' (libheif reports 0x0 until it decodes:
    the size the HEVC parameters state is checked against the pixel limit first). None: libheif refuses."""
    try:
        heif = pillow_heif.open_heif(data, convert_hdr_to_8bit=True)
        width, height = heif.size
    except Exception:  # noqa: BLE001 - libheif refuses it too (or pillow-heif is not installed)
        return None
    if not width or not height:
        from mirror_scan.scan.decoders.heif import stated_size

        width, height = stated_size(data) or (0, 0)
        if not width or not height:
            raise DecodeFailure("HEIF picture of unknown size: neither 'ispe' nor its HEVC parameters state it")
    _check_pixels(width, height, limits)
    try:
        img = heif.to_pillow()
    except Exception as err:  # noqa: BLE001 - a decoder error on broken bytes is a broken file
        raise DecodeFailure(f"HEIF: {one_line(str(err))}") from None
    _check_pixels(img.width, img.height, limits)
    img.format = "HEIF"
    return img


def _check_pixels(width: int, height: int, limits: Limits) -> None:
    if width * height > limits.max_pixels:
        raise DecodeFailure(
            f"image declares {width}x{height} pixels, over the limit of {limits.max_pixels:,} "
            "(possible decompression bomb)"
        )


def _mp_header_offset(data: bytes) -> int | None:
    """Where the MP Format header (its TIFF header) starts: offsets of secondary pictures count from it."""
    at = data.find(b"\xff\xe2", 2, 1 << 20)
    while at != -1 and at + 8 <= len(data):
        if data[at + 4 : at + 8] == b"MPF\x00":
            return at + 8
        at = data.find(b"\xff\xe2", at + 2, 1 << 20)
    return None


def _auxiliary_kind(picture: bytes) -> str | None:
    head = picture[:65536]
    if any(marker in head for marker in GAIN_MAP_MARKERS):
        return "gain map"
    if any(marker in head for marker in DEPTH_MAP_MARKERS):
        return "depth map"
    return None


def _still(
    img: Image.Image, prep: Preprocess, rows: Rows, where: str, crop: tuple | None = None, data: bytes | None = None
) -> None:
    # Decoded whole, JPEGs too (no draft mode): PDQ's reference samples the picture as stored to 512x512
    # by nearest neighbour, and a reduced decode (libjpeg's scaled IDCT) moves the shared hash by up to 18
    # bits and its quality by up to 27 on detailed pictures (docs/architecture.md), across the threshold of
    # 50 where it matters. One decode serves both views; on a GPU machine nvJPEG may do it (gpujpeg.py).
    # With resize "thumbnail512" a large JPEG is decoded a second time, drafted, for the model's view.
    opened = img
    if data is not None:
        img = gpujpeg.decoded(img, data, rows.limits.jpeg_decoder)
    img.load()  # first, so a broken file fails here as in the other modes
    small = _drafted_thumbnail(opened, data, rows.limits) if data is not None else None
    img = _clipped(img, crop)
    hashed = pdq_dihedral(img)  # as stored: no EXIF rotation
    rotated = img.getexif().get(ORIENTATION, 1) != 1
    frame = ImageOps.exif_transpose(img) if rotated else img
    if small is not None and rotated:  # fedi-safety ignores the tag; the thumbnail is turned as viewers turn it
        small = ImageOps.exif_transpose(small)
    rows.add_frame(frame, where, hashed, small if rows.limits.resize == "thumbnail512" else None, small)


def _drafted_thumbnail(img: Image.Image, data: bytes, limits: Limits) -> Image.Image | None:
    """With resize "thumbnail512", a JPEG's thumbnail as fedi-safety makes it: from a second open of the
    bytes, drafted before any load (libjpeg's scaled decode), beside the whole decode PDQ needs. None when
    the draft would not reduce it (the whole decode's thumbnail is then the same pixels, nvJPEG's nearly)
    or not a JPEG."""
    wanted = limits.resize == "thumbnail512" or limits.deepdanbooru  # DeepDanbooru sees fedi-safety's thumbnail
    if not wanted or img.format != "JPEG" or draft_scale(img.width, img.height) == 1:
        return None
    fresh = _open(data, limits, formats=("JPEG",))  # the same header and pixel-limit checks
    with clock("thumbnail"):
        return thumbnail(fresh)


def _clipped(img: Image.Image, crop: tuple | None) -> Image.Image:
    """The frame as a browser shows it: cropped to the canvas when it grew past it (gifclip.py)."""
    if crop is None or (img.width <= crop[2] and img.height <= crop[3]):
        return img
    return img.crop((0, 0, min(img.width, crop[2]), min(img.height, crop[3])))


def _pictures(data: bytes, img: Image.Image, prep: Preprocess, limits: Limits, rows: Rows) -> int:
    """A multi-picture JPEG (MPO; Ultra HDR's primary picture plus gain map): each picture is a JPEG of
    its own, decoded on its own (draft mode and all). Gain and depth maps are not pictures to look at."""
    entries = list(img.mpinfo.get(0xB002, []))[: limits.max_frames]
    base = _mp_header_offset(data)
    skipped = []
    for number, entry in enumerate(entries, start=1):
        kind = entry.get("Attribute", {}).get("MPType", "Undefined")
        if number == 1:
            picture = data
        else:
            if base is None:
                break
            start, size = int(entry.get("DataOffset", 0)) + base, int(entry.get("Size", 0))
            if start <= 0 or size <= 0 or start + size > len(data):
                rows.notes.append(f"picture {number} lies outside the file: not scored")
                continue
            picture = data[start : start + size]
            auxiliary = _auxiliary_kind(picture)
            if auxiliary:
                skipped.append(f"picture {number} ({auxiliary})")
                continue
        try:
            part = _open(picture, limits, formats=("JPEG",))
        except DecodeFailure as err:
            if number == 1:
                raise
            rows.notes.append(f"picture {number} unreadable: {err}")
            continue
        try:
            _still(part, prep, rows, f"picture {number} ({kind})", data=picture)
        except Exception as err:  # noqa: BLE001 - a secondary picture that fails leaves the others
            if number == 1:
                raise
            rows.notes.append(f"picture {number} unreadable: {err}")
    if skipped:
        rows.notes.append(f"{len(entries)} pictures; not scored: {', '.join(skipped)}")
    return len(entries)


def _frame_cap(frames: int, pixels: int, limits: Limits) -> str | None:
    if frames >= limits.max_decoded_frames:
        return f"frame cap: only the first {limits.max_decoded_frames:,} frames were looked at"
    if pixels >= limits.max_decoded_pixels:
        return f"frame cap: only the first {frames:,} frames were looked at (pixel budget)"
    return None


def _frames(img: Image.Image, limits: Limits, rows: Rows, crop: tuple | None = None) -> int:
    """Every frame of an animation or multi-page file, in order; the distinct ones become rows."""
    distinct = DistinctFrames(limits.max_frames, rows.keep_size, limits.resize)
    index, elapsed_ms = 0, 0.0
    animated = img.format in ("GIF", "PNG", "WEBP", "JXL", "AVIF") and getattr(img, "n_frames", 1) > 1
    while True:
        if (cap := _frame_cap(index, index * img.width * img.height, limits)) is not None:
            rows.notes.append(cap)
            break
        try:
            img.seek(index)
        except EOFError:
            break
        img.load()
        shown = _clipped(img, crop)
        distinct.offer(index, shown)
        if animated:  # a timeline: one vPDQ frame per second, like a video's
            rows.vpdq.offer(elapsed_ms / 1000.0, lambda shown=shown: np.asarray(shown.convert("RGB")))
            elapsed_ms += float(img.info.get("duration") or 100)
        index += 1
    chosen = distinct.chosen(rows.notes)
    for frame_index, frame, hashed in chosen:
        rows.add_frame(frame, f"frame {frame_index + 1}" if index > 1 else "", hashed)
    return index


def _decode_image(data: bytes, prep: Preprocess, limits: Limits) -> Decoded:
    screen = gifclip.canvas(data, limits.max_pixels)
    clamped = 0
    if screen is not None:  # frames beyond the canvas: clipped to it, as browsers draw them
        try:
            data, clamped = gifclip.clip_frames(data, limits.max_pixels)
        except gifclip.ClipRefused as err:
            raise DecodeFailure(str(err)) from None
    img = _open(data, limits)
    fmt = (img.format or "image").lower()
    rows = Rows(prep, limits)
    crop = None  # what a frame that still grew the picture is cropped back to (_clipped)
    if screen is not None and img.format == "GIF":
        crop = (0, 0, screen[0], screen[1])
    clipped = bool(clamped or (crop and (img.width > crop[2] or img.height > crop[3])))
    if clipped:  # partial: the rows beyond the canvas are in the file and not scored
        rows.notes.append(
            f"partial: frames reach beyond the {screen[0]}x{screen[1]} canvas: clipped to it, as browsers show them"
        )
    if img.format == "MPO":
        total = _pictures(data, img, prep, limits, rows)
    elif getattr(img, "is_animated", False):
        total = _frames(img, limits, rows, crop)
    else:
        _still(img, prep, rows, "", crop, data=data)
        total = 1
    rows.finish()
    if not rows.rows:
        raise DecodeFailure("no frame could be decoded")
    return Decoded(fmt, rows.pixels(), total, rows.labels(), rows.pdq, rows.pdq_variants, rows.notes,
                   partial=clipped, vpdq=rows.vpdq.features, dd_view=rows.dd_view)  # fmt: skip


def _describe(err: BaseException) -> str:
    """An error in one line; the JPEG XL plugin's advice to its own developers ("Please build libjxl from
    source ...") is left out: it is not the admin's to follow."""
    said = " ".join(str(err).split()).split(". Please build `libjxl`")[0]
    return said or type(err).__name__


def _no_pixels(decoded: Decoded) -> bool:
    """Every row one flat colour: what a lenient decoder fills in when nothing of the picture arrived."""
    flat = decoded.pixels.reshape(len(decoded.pixels), 3, -1)
    return bool((flat.max(axis=2) - flat.min(axis=2) < 1e-6).all())


AVIF_BRANDS = (b"avif", b"avis")


def _is_avif(data: bytes) -> bool:
    """An ftyp box naming an AVIF brand (major or compatible)."""
    if data[4:8] != b"ftyp" or len(data) < 16:
        return False
    size = min(int.from_bytes(data[:4], "big"), len(data), 256)
    brands = [data[8:12], *(data[i : i + 4] for i in range(16, size - 3, 4))]
    return any(brand in AVIF_BRANDS for brand in brands)


def _decode_image_or_partial(data: bytes, prep: Preprocess, limits: Limits) -> Decoded:
    """Pillow and its plugins first (strict, then the lenient paths browsers take); an AVIF they refuse
    goes to the second decoder (avif.py: FFmpeg's libdav1d)."""
    try:
        return _decode_still_or_partial(data, prep, limits)
    except DecodeFailure as first:
        if not _is_avif(data):
            raise
        return _decode_avif_second(data, prep, limits, str(first))


def _decode_avif_second(data: bytes, prep: Preprocess, limits: Limits, first: str) -> Decoded:
    from mirror_scan.scan.decoders.avif import decode_avif

    try:
        img = decode_avif(data, limits.max_pixels)
    except Exception as err:  # noqa: BLE001 - the second decoder's failure on odd bytes: both reasons said
        raise DecodeFailure(f"{first}; FFmpeg's libdav1d could not decode it either: {_describe(err)}") from None
    note = f"partial: libavif refused it ({first}); decoded by FFmpeg's libdav1d, as other viewers show it"
    if img.info.get("concealed"):
        note = (f"partial: libavif refused its damaged AV1 data ({first}); decoded by FFmpeg's libdav1d with the "
                "tile data padded, as Chromium draws it")  # fmt: skip
    decoded = _one_picture(img, "avif", prep, limits, note)
    if decoded is None:
        raise DecodeFailure(f"{first}; no frame could be decoded")
    return decoded


def _one_picture(img: Image.Image, fmt: str, prep: Preprocess, limits: Limits, note: str) -> Decoded | None:
    """A picture a second decoder or a salvage path made, as a partial Decoded that says how (None: no rows)."""
    rows = Rows(prep, limits)
    _still(img, prep, rows, "")
    rows.finish()
    if not rows.rows:
        return None
    return Decoded(fmt, rows.pixels(), 1, rows.labels(), rows.pdq, rows.pdq_variants, [note, *rows.notes],
                   partial=True, dd_view=rows.dd_view)  # fmt: skip


def _strict_rebuilt(rebuilt: bytes, prep: Preprocess, limits: Limits, note: str) -> Decoded | None:
    """A file written again from the parts of it that arrived whole (frames, scans), decoded strictly and
    marked partial, `note` first; None when even those parts do not decode."""
    with _MODE.strict():
        try:
            decoded = _decode_image(rebuilt, prep, limits)
        except Exception:  # noqa: BLE001 - a plugin's bug on odd bytes is a broken file, not a crash
            return None
    decoded.partial = True
    decoded.notes.insert(0, note)
    return decoded


def _salvage_webp(data: bytes, prep: Preprocess, limits: Limits, strict_error: BaseException) -> Decoded | None:
    from mirror_scan.scan.decoders.webpsalvage import first_frame_still, salvage, whole_frames

    said = _describe(strict_error)
    animation = whole_frames(data)
    if animation is not None and animation[0] is not None:  # a cut animation: the frames that arrived whole
        rebuilt, count, cut = animation
        return _strict_rebuilt(rebuilt, prep, limits, f"partial: the animation is cut short ({said}); the {count} "
                               f"frame{'s' if count != 1 else ''} that arrived whole were scored"
                               f"{', the cut one was not' if cut else ''}, as browsers show them")  # fmt: skip
    where = ""
    if animation is not None or b"ANIM" in data[12:64]:  # cut in, or damaged: the first frame's rows
        still = first_frame_still(data)
        if still is None:
            return None
        cut = "is cut short in" if animation is not None else "is damaged;"
        data, where = still, f"the animation {cut} its first frame: "
    found = salvage(data, limits.max_pixels)
    if found is None:
        return None
    img, arrived, height = found
    note = f"partial: {where}{arrived} of {height} rows arrived, decoded as browsers draw them ({said})"
    return _one_picture(img, "webp", prep, limits, note)


def _salvage_gif(data: bytes, prep: Preprocess, limits: Limits, strict_error: BaseException) -> Decoded | None:
    from mirror_scan.scan.decoders.gifsalvage import salvage, whole_frames

    said = _describe(strict_error)
    animation = whole_frames(data)
    if animation is not None:  # a cut animation: the frames that arrived whole (else the first one's rows)
        rebuilt, count = animation
        decoded = _strict_rebuilt(rebuilt, prep, limits, f"partial: the animation is cut short ({said}); the "
                                  f"{count} frame{'s' if count != 1 else ''} that arrived whole were scored, as "
                                  "browsers show them")  # fmt: skip
        if decoded is not None:
            return decoded
    found = salvage(data, limits.max_pixels)
    if found is None:
        return None
    img, arrived, height = found
    note = f"partial: {arrived} of {height} rows arrived, drawn as browsers draw them ({said})"
    return _one_picture(img, "gif", prep, limits, note)


def _salvage_progressive_jpeg(
    data: bytes, prep: Preprocess, limits: Limits, strict_error: BaseException
) -> Decoded | None:
    from mirror_scan.scan.decoders.jpegdc import whole_scans

    if data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return None  # damaged, not cut: libjpeg's lenient decode draws it as browsers do (else _first_scan)
    found = whole_scans(data)
    if found is not None:  # cut in a later scan: the scans that arrived whole (else the first one's blocks)
        ended, scans = found
        decoded = _strict_rebuilt(ended, prep, limits, f"partial: the progressive JPEG is cut short "
                                  f"({_describe(strict_error)}); the {scans} scan{'s' if scans != 1 else ''} that "
                                  "arrived whole were drawn, as browsers draw them")  # fmt: skip
        if decoded is not None:
            return decoded
    return _first_scan(data, prep, limits, strict_error)


def _first_scan(data: bytes, prep: Preprocess, limits: Limits, strict_error: BaseException) -> Decoded | None:
    """A progressive JPEG's first scan, as far as it goes (jpegdc.py): when nothing else drew it."""
    from mirror_scan.scan.decoders.jpegdc import first_scan

    found = first_scan(data, limits.max_pixels)
    if found is None:
        return None
    img, rows, height = found
    note = (f"partial: the progressive JPEG is cut short or damaged in its first scan ({_describe(strict_error)}); "
            f"{rows} of {height} rows drawn from their blocks' average colours, as browsers draw them")  # fmt: skip
    return _one_picture(img, "jpeg", prep, limits, note)


def _salvage_jxl(data: bytes, prep: Preprocess, limits: Limits, strict_error: BaseException) -> Decoded | None:
    from mirror_scan.scan.decoders.jxlsalvage import salvage

    found = salvage(data, limits.max_pixels)
    if found is None:
        return None
    img, whole = found
    what = "its first frame decoded whole" if whole else "what arrived drawn progressively, as viewers show it"
    note = f"partial: Pillow's JPEG XL plugin refused it ({_describe(strict_error)}); libjxl: {what}"
    return _one_picture(img, "jxl", prep, limits, note)


def _read_bmp(data: bytes, prep: Preprocess, limits: Limits, strict_error: BaseException) -> Decoded | None:
    from mirror_scan.scan.decoders.bmpread import BmpRefused, read_bmp

    try:
        img = read_bmp(data, limits.max_pixels)
    except BmpRefused:
        return None
    note = f"partial: Pillow refused it ({_describe(strict_error)}); read by the BMP reader, as browsers draw it"
    return _one_picture(img, "bmp", prep, limits, note)


def _decode_still_or_partial(data: bytes, prep: Preprocess, limits: Limits) -> Decoded:
    """Strict first; a file that fails is decoded again as far as it goes (what a browser shows)."""
    with _MODE.strict():
        try:
            return _decode_image(data, prep, limits)
        except Unidentified as err:  # e.g. a PNG whose tEXt before IDAT has a bad CRC: browsers skip it
            strict_error = err
        except (DecodeFailure, Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - a plugin's bug on odd bytes is a broken file, not a crash
            strict_error = err
    stripped, dropped = strip_metadata(data)
    if dropped:  # metadata a viewer would skip (oversized or malformed) never stops the pixels
        note = f"metadata skipped ({', '.join(dropped)}): {_describe(strict_error)}"
        with _MODE.strict():
            try:
                decoded = _decode_image(stripped, prep, limits)
                decoded.notes.insert(0, note)
                return decoded
            except Unidentified as err:
                strict_error, data = err, stripped
            except (DecodeFailure, Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
                raise
            except Exception as err:  # noqa: BLE001
                strict_error, data = err, stripped  # broken beyond its metadata: as far as it goes, below
    still = default_image(data)
    if still is not None:  # a broken animation: browsers show the APNG's default image, and so is it scored
        try:
            decoded = _decode_still_or_partial(still, prep, limits)
        except DecodeFailure:
            pass
        else:
            decoded.partial = True
            decoded.notes.insert(0, f"partial: the animation is broken ({_describe(strict_error)}); its default "
                                    "image was scored, as browsers show it")  # fmt: skip
            return decoded
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":  # browsers draw a cut WebP's rows as they arrive
        salvaged = _salvage_webp(data, prep, limits, strict_error)
        if salvaged is not None:
            return salvaged
    if data[:6] in gifclip.GIF_SIGNATURES:  # browsers draw a cut GIF's rows and passes as they arrive
        salvaged = _salvage_gif(data, prep, limits, strict_error)
        if salvaged is not None:
            return salvaged
    if data[:2] == b"BM":  # BMP layouts browsers draw and Pillow refuses (bmpread.py)
        salvaged = _read_bmp(data, prep, limits, strict_error)
        if salvaged is not None:
            return salvaged
    if sniff(data[:64]) == "jxl":  # JPEG XL is progressive: viewers draw what arrived (libjxl's flush)
        salvaged = _salvage_jxl(data, prep, limits, strict_error)
        if salvaged is not None:
            return salvaged
    if data[:2] == b"\xff\xd8":  # a cut progressive JPEG: browsers draw the scans that arrived
        salvaged = _salvage_progressive_jpeg(data, prep, limits, strict_error)
        if salvaged is not None:
            return salvaged
    with _MODE.lenient():
        try:
            decoded = _decode_image(data, prep, limits)
        except Exception:  # noqa: BLE001
            decoded = None
    if decoded is None or _no_pixels(decoded):
        if data[:2] == b"\xff\xd8" and (first := _first_scan(data, prep, limits, strict_error)) is not None:
            return first
        if decoded is not None:
            raise DecodeFailure(f"corrupt or truncated, no pixels decoded: {_describe(strict_error)}")
        if isinstance(strict_error, Unidentified):
            raise DecodeFailure(str(strict_error)) from None
        raise DecodeFailure(f"corrupt or truncated: {_describe(strict_error)}") from None
    decoded.partial = True
    decoded.notes.insert(0, f"partial: decoded as far as it goes ({_describe(strict_error)})")
    return decoded


# ---------------------------------------------------------------- videos


def _decode_video(data: bytes, fmt: str, prep: Preprocess, limits: Limits) -> Decoded:
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as err:  # noqa: BLE001
        raise DecodeFailure(f"corrupt or unreadable video: {_describe(err)}") from None
    rows = Rows(prep, limits)
    with container:
        if not container.streams.video:
            raise DecodeFailure("video file has no video stream")
        stream = container.streams.video[0]
        context = stream.codec_context  # None for a codec FFmpeg does not know (a Canon CR3's raw track)
        if context is None or not context.width or not context.height:
            tag = one_line(str(getattr(stream, "codec_tag", "") or "unknown"))[:16]
            raise DecodeFailure(f"unsupported video codec ({tag}): no decoder for its frames")
        width, height = context.width, context.height
        if width * height > limits.max_pixels:
            raise DecodeFailure(f"video frames are {width}x{height}, over the limit of {limits.max_pixels:,} pixels")
        stream.thread_type = "AUTO"
        expected = _expected_frames(stream, container)
        if expected > limits.max_decoded_frames:
            # Too long to decode every frame: keyframes only. Encoders put one at every scene cut (x264's
            # scenecut) and phones every second or two, so a cut of a few seconds still has one.
            stream.codec_context.skip_frame = "NONKEY"
            rows.notes.append(f"about {expected:,} frames: keyframes only")
        distinct = DistinctFrames(limits.max_frames, rows.keep_size, limits.resize)
        decoded = 0
        try:
            for frame in container.decode(stream):
                if (cap := _frame_cap(decoded, decoded * width * height, limits)) is not None:
                    rows.notes.append(cap)
                    break
                signature = frame.to_ndarray(format="rgb24", width=16, height=16).astype(np.int16).reshape(-1)
                distinct.offer(decoded, frame.to_image, signature)
                rows.vpdq.offer(frame.time, lambda f=frame: f.to_ndarray(format="rgb24"))
                decoded += 1
        except Exception as err:  # noqa: BLE001 - FFmpeg's errors on odd bytes: a broken file, not a crash
            if not decoded:
                raise DecodeFailure(f"corrupt video: {_describe(err)}") from None
            rows.notes.insert(0, f"partial: decoded as far as it goes ({_describe(err)})")
        for index, image, hashed in distinct.chosen(rows.notes):
            rows.add_frame(image, f"frame {index + 1}", hashed)
    rows.finish()
    if not rows.rows:
        raise DecodeFailure("video has no decodable frames")
    partial = bool(rows.notes) and rows.notes[0].startswith("partial")
    return Decoded(fmt, rows.pixels(), decoded, rows.labels(), rows.pdq, rows.pdq_variants, rows.notes, partial,
                   rows.vpdq.features, dd_view=rows.dd_view)  # fmt: skip


def _expected_frames(stream, container) -> int:
    import av

    if stream.frames:
        return int(stream.frames)
    rate = float(stream.average_rate or stream.guessed_rate or 30)
    if stream.duration and stream.time_base:
        return int(float(stream.duration * stream.time_base) * rate)
    if container.duration:
        return int(container.duration / av.time_base * rate)
    return 0


# ---------------------------------------------------------------- entry point


# Pillow formats without a signature check: Pillow tries their (pure Python) header parsers on any bytes.
UNSIGNED_FORMATS = tuple(f for f in PILLOW_FORMATS if Image.OPEN[f][1] is None)
UNSUPPORTED = "unsupported format: not a recognised image or video (checked from the file's bytes)"


def quick_reject(data: bytes) -> str | None:
    """The reason for bytes no decoder would take, found without running any C decoder (signature checks
    and pure-Python header parsers only), so junk never costs a trip to a decoder process. None: decode."""
    if not data:
        return "empty file (0 bytes)"
    head = data[:64]
    try:
        if sniff(head) is not None or any(Image.OPEN[f][1](head[:16]) for f in PILLOW_FORMATS if Image.OPEN[f][1]):
            return None
        Image.open(io.BytesIO(data), formats=UNSIGNED_FORMATS)
    except UnidentifiedImageError:
        return UNSUPPORTED
    except Exception:  # noqa: BLE001 - let the decoder process give the full reason
        return None
    return None


def decode(data: bytes, prep: Preprocess, limits: Limits = Limits()) -> Decoded | str:  # noqa: B008 - frozen
    """Decoded rows, or the reason the bytes cannot be scanned; a Decoded says where its CPU went (cpu_s:
    "pdq", "view", "normalise", "thumbnail" (resize "thumbnail512": a JPEG's drafted second decode), and
    "decode" for the rest: the decoders and the salvage paths)."""
    if not data:
        return "empty file (0 bytes)"
    started = time.thread_time()
    clock.reset()
    with worker_stderr_quiet() if data[:4] in TIFF_SIGNATURES else nullcontext():
        result = _decode(data, prep, limits)  # libtiff warns on stderr of tags it skips: not the admin's log
    if isinstance(result, Decoded):
        named = dict(clock.spent)
        result.cpu_s = {"decode": max(0.0, time.thread_time() - started - sum(named.values())), **named}
    return result


def _decode(data: bytes, prep: Preprocess, limits: Limits) -> Decoded | str:
    fmt = sniff(data[:64])
    try:
        if fmt in VIDEO_FORMATS:
            return _decode_video(data, fmt, prep, limits)
        return _decode_image_or_partial(data, prep, limits)
    except DecodeFailure as err:
        return str(err)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return f"decompression bomb: {err}"
    except MemoryError:
        return f"{fmt or 'image'} needs too much memory to decode"
    except Exception as err:  # noqa: BLE001 - one odd file must never stop a scan
        return f"corrupt or unreadable {fmt or 'file'}: {_describe(err)}"
