"""From decoded pictures to model rows: views of a frame (alpha composited and ignored), tiles of very
wide or tall pictures, the row collector with its caps, near-duplicate frames skipped, vPDQ per second."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from mirror_scan.lists import hashes
from mirror_scan.model.bundle import Preprocess
from mirror_scan.model.preprocess import normalise, resize_and_crop, thumbnail
from mirror_scan.scan.decoders.colour import displayed
from mirror_scan.scan.decoders.decoded import Limits, clock

AVAILABLE = hashes.AVAILABLE


def pdq_dihedral(image: Image.Image) -> tuple[str, int, list[str]] | None:
    """The picture's PDQ and its 8 variants (hashes.pdq_dihedral), or None without pdqhash."""
    if not AVAILABLE:
        return None
    with clock("pdq"):
        return hashes.pdq_dihedral(image)


NEUTRAL_BACKGROUND = (128, 128, 128)
# A frame is a near-duplicate of an earlier one when no cell of their 16x16 signatures differs by more.
DUPLICATE_MAX_DIFF = 20
# Transparency: score with alpha ignored too when at least this share of pixels is mostly transparent
# and the colour under them is not uniform (something is there that compositing hides).
HIDDEN_SHARE = 0.25
HIDDEN_MIN_STD = 4.0
HIDDEN_SAMPLE_PIXELS = 1 << 20  # the test looks at about this many pixels (every n-th row and column)
# A frame whose opaque pixels lie within a box of less than this share of it, or mostly outside the centre
# square the model's crop takes, is scored cropped to that box too: a picture in a corner or strip of a
# large transparent canvas (a GIF's first frame on a canvas grown to hold it, the rows of a cut file that
# arrived) is what a viewer sees, and the centre crop would miss it or shrink it to a few pixels. An
# ordinary logo on a transparent margin is neither: one row.
VISIBLE_SHARE = 1 / 16


def _views(frame: Image.Image) -> list[tuple[str, Image.Image]]:
    """The RGB pictures of one frame: composited on neutral grey; its opaque part alone when that is small
    (VISIBLE_SHARE); and, when mostly transparent pixels hide non-uniform colour, the colour with alpha
    ignored as well."""
    info = frame.info  # what colour management needs (the ICC profile, gAMA), before any conversion
    frame = hashes.flatten_depth(frame)
    has_alpha = frame.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (frame.mode == "P" and "transparency" in frame.info)
    if not has_alpha:
        return [("", displayed(frame if frame.mode in ("RGB", "CMYK") else frame.convert("RGB"), info))]
    rgba = displayed(frame.convert("RGBA"), info)
    background = Image.new("RGBA", rgba.size, (*NEUTRAL_BACKGROUND, 255))
    composited = Image.alpha_composite(background, rgba).convert("RGB")
    views = [("", composited)]
    box = rgba.getchannel("A").point(lambda a: 255 if a >= 128 else 0).getbbox()
    if box is not None and _apart(box, rgba.size):
        views.append(("visible part", composited.crop(box)))
    step = max(1, math.isqrt(rgba.width * rgba.height // HIDDEN_SAMPLE_PIXELS))  # a large canvas: a sample
    arr = np.asarray(rgba)[::step, ::step]
    hidden = arr[..., 3] < 128
    if hidden.mean() >= HIDDEN_SHARE and float(arr[..., :3][hidden].std(axis=0).max()) > HIDDEN_MIN_STD:
        views.append(("alpha ignored", rgba.convert("RGB")))
    return views


def _apart(box: tuple[int, int, int, int], size: tuple[int, int]) -> bool:
    """Whether the opaque box is small in the frame, or mostly outside its centre square (VISIBLE_SHARE)."""
    width, height = size
    area = (box[2] - box[0]) * (box[3] - box[1])
    if area < VISIBLE_SHARE * width * height:
        return True
    short = min(width, height)
    left, top = (width - short) // 2, (height - short) // 2
    inside_w = max(0, min(box[2], left + short) - max(box[0], left))
    inside_h = max(0, min(box[3], top + short) - max(box[1], top))
    return inside_w * inside_h < area / 2


def _tiles(img: Image.Image, max_tiles: int) -> tuple[list[Image.Image], bool]:
    """Crops along the long side that together cover every pixel: squares of the short side, evenly
    spaced from one end to the other. Past max_tiles, longer crops (squashed by the model's resize)."""
    width, height = img.size
    short, long = min(width, height), max(width, height)
    count = math.ceil(long / short - 1e-9)
    if count <= 1:
        return [], False
    squashed = count > max_tiles
    count = min(count, max_tiles)
    span = short if not squashed else math.ceil(long / count)
    starts = [round(i * (long - span) / (count - 1)) for i in range(count)]
    boxes = [(s, 0, s + span, height) if width > height else (0, s, width, s + span) for s in starts]
    return [img.crop(box) for box in boxes], squashed


def _squash(img: Image.Image, prep: Preprocess) -> Image.Image:
    height, width = prep.size
    return img.resize((width, height), Image.Resampling.BICUBIC)


class Rows:
    """Collects the model inputs of one file (uint8 until the end, to keep memory small)."""

    def __init__(self, prep: Preprocess, limits: Limits) -> None:
        self.prep, self.limits = prep, limits
        self.resize = limits.resize
        self.rows: list[tuple[str, Image.Image]] = []
        self.tiles: list[tuple[str, Image.Image]] = []  # coverage "full": taken after every centre crop
        self.pdq: list[tuple[str, int]] = []
        self.pdq_variants: list[str] = []
        self.vpdq = VideoHasher()  # a PDQ per second of a video or animation
        self.notes: list[str] = []
        self._tile_note = False
        # Frames kept for later are reduced to this short side: enough for the centre crop and for tiles.
        self.keep_size = max(prep.size)
        self.dd_view: np.ndarray | None = None  # limits.deepdanbooru: the first frame's 512 thumbnail

    def add_frame(
        self,
        frame: Image.Image,
        where: str,
        hashed: tuple[str, int, list[str]] | None = None,
        small: Image.Image | None = None,
        drafted: Image.Image | None = None,
    ) -> None:
        """frame: the picture as a viewer sees it (EXIF rotation applied); hashed: its PDQ as stored (see
        hashes.reference_pixels), computed from this frame when not given; small: with resize "thumbnail512",
        the frame's thumbnail made from the file as opened (a JPEG's draft decode: other pixels than the
        thumbnail of the whole decode), the centre rows' source (tiles still come from the frame)."""
        if hashed is None:
            hashed = pdq_dihedral(frame)
        with clock("view"):
            self._add_views(frame, where, small)
        if self.limits.deepdanbooru and self.dd_view is None:
            # horde-safety's DeepDanbooru is handed the picture fedi-safety thumbnailed (a JPEG's drafted
            # decode: `drafted`), in its own mode; it converts to RGB itself (model/deepdanbooru.py).
            with clock("deepdanbooru view"):
                view = drafted if drafted is not None else thumbnail(frame)
                self.dd_view = np.asarray(view.convert("RGB") if view.mode != "RGB" else view, dtype=np.uint8)
        if hashed is not None:
            digest, quality, variants = hashed
            self.pdq.append((digest, quality))
            self.pdq_variants.extend(variants)

    def _add_views(self, frame: Image.Image, where: str, small: Image.Image | None = None) -> None:
        views = _views(small if small is not None else frame)
        for view, rgb in views:
            label = ", ".join(part for part in (where, view) if part)
            self.rows.append((label, resize_and_crop(rgb, self.prep, self.resize)))
        if self.limits.coverage != "full":
            return
        for view, rgb in views if small is None else _views(frame):
            label = ", ".join(part for part in (where, view) if part)
            tiles, squashed = _tiles(rgb, self.limits.max_tiles)
            if squashed and not self._tile_note:
                self.notes.append(f"longer than {self.limits.max_tiles}:1: tiles squashed to cover every pixel")
                self._tile_note = True
            for i, tile in enumerate(tiles):
                square = _squash(tile, self.prep) if squashed else resize_and_crop(tile, self.prep, self.resize)
                self.tiles.append((", ".join(p for p in (label, f"tile {i + 1}/{len(tiles)}") if p), square))

    def finish(self) -> None:
        """Centre crops first, then tiles, at most max_rows in all."""
        cap = self.limits.max_rows
        wanted = len(self.rows) + len(self.tiles)
        self.rows = (self.rows + self.tiles)[:cap]
        self.tiles = []
        if wanted > cap:
            self.notes.append(f"row cap: {cap} of {wanted} crops scored (centre crops first)")

    def pixels(self) -> np.ndarray:
        with clock("normalise"):
            return np.stack([normalise(img, self.prep) for _, img in self.rows])

    def labels(self) -> list[str]:
        return [label or "image" for label, _ in self.rows]


class DistinctFrames:
    """Keeps the distinct frames of a sequence, at most `cap`. Past the cap the most novel ones win (how far
    a frame is from every distinct frame before it): the one odd frame in a long animation is exactly what
    must not be dropped."""

    def __init__(self, cap: int, keep_size: int, resize: str = "exact") -> None:
        self.cap = cap
        self.resize = resize  # "thumbnail512": kept frames are their 512 thumbnail instead (no draft)
        self.keep_size = keep_size  # kept frames are reduced to this short side: 32 full-size frames could
        self.signatures: list[np.ndarray] = []  # of the recent distinct frames
        # (novelty, index, frame, its PDQ taken at full size before the reduction)
        self.kept: list[tuple[float, int, Image.Image, tuple[str, int, list[str]] | None]] = []
        self.distinct = 0

    @staticmethod
    def signature(frame: Image.Image) -> np.ndarray:
        small = frame.convert("RGB").resize((16, 16), Image.Resampling.BOX)
        return np.asarray(small, dtype=np.int16).reshape(-1)

    def offer(
        self, index: int, frame: Image.Image | Callable[[], Image.Image], signature: np.ndarray | None = None
    ) -> None:
        """frame: the picture, or a function making it (a video frame is converted only when kept)."""
        sig = self.signature(frame) if signature is None else signature  # type: ignore[arg-type]
        novelty = math.inf
        if self.signatures:
            novelty = float(np.abs(np.stack(self.signatures[-256:]) - sig).max(axis=1).min())
            if novelty <= DUPLICATE_MAX_DIFF:
                return
        self.signatures.append(sig)
        if len(self.signatures) > 512:
            del self.signatures[:256]
        self.distinct += 1
        if len(self.kept) < self.cap:
            self.kept.append((novelty, index, *self._own(frame)))
            return
        least = min(range(len(self.kept)), key=lambda i: self.kept[i][0])
        if novelty > self.kept[least][0]:
            self.kept[least] = (novelty, index, *self._own(frame))

    def _own(self, frame: Image.Image | Callable[[], Image.Image]) -> tuple[Image.Image, tuple | None]:
        """A copy of the frame, no bigger than the model needs (alpha and palette transparency kept), and
        the PDQ of the frame as decoded (before the reduction: what other hashers see)."""
        image = frame if isinstance(frame, Image.Image) else frame()
        return self._reduced(image), pdq_dihedral(image)

    def _reduced(self, image: Image.Image) -> Image.Image:
        image = hashes.flatten_depth(image)
        if image.mode == "P" or image.mode not in ("RGB", "RGBA", "L", "LA"):
            image = image.convert("RGBA" if "transparency" in image.info or "A" in image.mode else "RGB")
        if self.resize == "thumbnail512":  # fedi-safety's thumbnail of each frame (it reads the first only)
            small = thumbnail(image)
            return small.copy() if small is image else small
        scale = self.keep_size / min(image.size)
        if scale >= 1:
            return image.copy()
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)

    def chosen(self, notes: list[str]) -> list[tuple[int, Image.Image, tuple | None]]:
        """The kept frames in order, each with its PDQ; a note when the cap left some out."""
        if self.distinct > len(self.kept):
            notes.append(f"frame cap: {len(self.kept)} of {self.distinct} distinct frames scored (the most different)")
        return [(index, frame, hashed) for _, index, frame, hashed in sorted(self.kept, key=lambda kept: kept[1])]


class VideoHasher:
    """vPDQ: the PDQ of the frame at every whole second of a video or animation (facebook/ThreatExchange
    vpdq, python-threatexchange's default seconds_per_hash = 1.0), as (hash, quality, timestamp)."""

    def __init__(self, every_s: float = 1.0, cap: int = 3600) -> None:
        self.every_s, self.cap = every_s, cap
        self.features: list[tuple[str, int, float]] = []
        self._next = 0.0

    def offer(self, timestamp: float | None, rgb: Callable[[], np.ndarray]) -> None:
        if not AVAILABLE or timestamp is None or timestamp + 1e-6 < self._next or len(self.features) >= self.cap:
            return
        frame = rgb()
        with clock("pdq"):
            digest, quality = hashes.pdq_frame(frame)
        self.features.append((digest, quality, round(float(timestamp), 3)))
        self._next = (math.floor(timestamp / self.every_s + 1e-6) + 1) * self.every_s


# ---------------------------------------------------------------- stills and animations
