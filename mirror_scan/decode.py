"""Bytes -> model-ready frames. Format from the bytes, never the name (old pict-rs keys have no
extension). Every failure is returned as a reason, never raised, so one bad file cannot stop a scan,
and nothing that fails to decode is ever acted on.

Bounded work per file: the pixel count is checked from the header before decoding (a PNG declaring
30000x30000 is refused, not allocated), big JPEGs decode at reduced size (draft mode), animations and
videos are sampled at up to `max_frames` frames spread over their length, and each frame is reduced to
the model's input size as soon as it is decoded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from .bundle import Preprocess
from .preprocess import normalise, resize_and_crop

try:  # JPEG XL through the pillow-jxl plugin (registers itself with Pillow)
    import pillow_jxl  # noqa: F401
except ImportError:  # pragma: no cover - optional at runtime, installed by default
    pass

NEUTRAL_BACKGROUND = (128, 128, 128)
ORIENTATION = 0x0112  # EXIF tag
VIDEO_FORMATS = ("mp4", "webm")
# ISO-BMFF brands: still/sequence AVIF, and the common MP4 family.
AVIF_BRANDS = {b"avif", b"avis"}
MP4_BRANDS = {
    b"isom",
    b"iso2",
    b"iso3",
    b"iso4",
    b"iso5",
    b"iso6",
    b"mp41",
    b"mp42",
    b"mp71",
    b"avc1",
    b"dash",
    b"M4V ",
    b"M4A ",
    b"f4v ",
    b"qt  ",
    b"MSNV",
    b"3gp4",
    b"3gp5",
    b"3g2a",
}


class DecodeFailure(Exception):
    """Raised inside this module only; callers receive the message as data."""


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 64_000_000
    max_frames: int = 8


@dataclass
class Decoded:
    format: str
    pixels: np.ndarray  # float32 [frames, 3, H, W]
    total_frames: int


def sniff(head: bytes) -> str | None:
    """Container format from the first bytes, or None if it is not one we read."""
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
        if brands & AVIF_BRANDS:
            return "avif"
        if brands & MP4_BRANDS:
            return "mp4"
    return None


def _to_rgb(frame: Image.Image) -> Image.Image:
    """Any mode -> RGB; transparency composited onto a neutral grey, 16-bit and float scaled down."""
    if frame.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(frame, dtype=np.float64)
        top = 65535.0 if frame.mode.startswith("I;16") or arr.max() > 255 else 255.0
        frame = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    elif frame.mode == "F":
        arr = np.asarray(frame, dtype=np.float64)
        frame = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8), "L")
    has_alpha = frame.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (frame.mode == "P" and "transparency" in frame.info)
    if has_alpha:
        rgba = frame.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*NEUTRAL_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return frame if frame.mode == "RGB" else frame.convert("RGB")


def _frame_indices(total: int, wanted: int) -> list[int]:
    if total <= wanted:
        return list(range(total))
    return sorted({round(i * (total - 1) / (wanted - 1)) for i in range(wanted)}) if wanted > 1 else [0]


def _decode_image(data: bytes, fmt: str, prep: Preprocess, limits: Limits) -> Decoded:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width < 1 or height < 1:
            raise DecodeFailure("image has no pixels")
        if width * height > limits.max_pixels:
            raise DecodeFailure(
                f"image declares {width}x{height} pixels, over the limit of {limits.max_pixels:,} "
                "(possible decompression bomb)"
            )
        if fmt == "jpeg":
            # libjpeg's scaled IDCT decodes at 1/2, 1/4 or 1/8 size (a proper low-pass) while staying at
            # least the model's input size; the bicubic resize does the rest. 3-4x less decode work.
            img.draft("RGB", (prep.size[1], prep.size[0]))
        total = int(getattr(img, "n_frames", 1) or 1)
        frames = []
        for index in _frame_indices(total, limits.max_frames):
            img.seek(index)
            if index == 0 and img.getexif().get(ORIENTATION, 1) != 1:
                frame = ImageOps.exif_transpose(img)
            else:
                frame = img if total == 1 else img.copy()
            frames.append(normalise(resize_and_crop(_to_rgb(frame), prep), prep))
    return Decoded(fmt, np.stack(frames), total)


def _decode_video(data: bytes, fmt: str, prep: Preprocess, limits: Limits) -> Decoded:
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError) as err:
        raise DecodeFailure(f"corrupt or unreadable video: {err}") from None
    with container:
        if not container.streams.video:
            raise DecodeFailure("video file has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > limits.max_pixels:
            raise DecodeFailure(f"video frames are {width}x{height}, over the limit of {limits.max_pixels:,} pixels")
        stream.thread_type = "AUTO"
        duration = (
            float(stream.duration * stream.time_base)
            if stream.duration and stream.time_base
            else (container.duration / av.time_base if container.duration else 0.0)
        )
        frames: list[np.ndarray] = []
        try:
            if duration > 0 and limits.max_frames > 1:
                targets = [duration * (i + 0.5) / limits.max_frames for i in range(limits.max_frames)]
                for target in targets:
                    container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
                    chosen = None
                    for frame in container.decode(stream):
                        chosen = frame  # the keyframe before target, then forward until we reach it
                        if frame.time is None or frame.time >= target:
                            break
                    if chosen is not None:
                        frames.append(normalise(resize_and_crop(chosen.to_image(), prep), prep))
            if not frames:
                container.seek(0)
                for frame in container.decode(stream):
                    frames.append(normalise(resize_and_crop(frame.to_image(), prep), prep))
                    if len(frames) >= limits.max_frames:
                        break
        except (av.error.FFmpegError, ValueError, OSError) as err:
            if not frames:
                raise DecodeFailure(f"corrupt video: {err}") from None
        if not frames:
            raise DecodeFailure("video has no decodable frames")
        total = int(stream.frames or len(frames))
    return Decoded(fmt, np.stack(frames), total)


def decode(data: bytes, prep: Preprocess, limits: Limits = Limits()) -> Decoded | str:
    """Decoded frames, or the reason the bytes cannot be scanned."""
    if not data:
        return "empty file (0 bytes)"
    fmt = sniff(data[:64])
    if fmt is None:
        return "unsupported format: not a recognised image or video (checked from the file's bytes)"
    try:
        if fmt in VIDEO_FORMATS:
            return _decode_video(data, fmt, prep, limits)
        return _decode_image(data, fmt, prep, limits)
    except DecodeFailure as err:
        return str(err)
    except Image.DecompressionBombError as err:
        return f"decompression bomb: {err}"
    except Image.DecompressionBombWarning as err:
        return f"decompression bomb: {err}"
    except MemoryError:
        return f"{fmt} image needs too much memory to decode"
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, ZeroDivisionError) as err:
        # Pillow reports truncated and corrupt data with these; the message says which.
        return f"corrupt or truncated {fmt}: {err}"
