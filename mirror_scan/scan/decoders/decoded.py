"""What a decode gives: model-ready rows and what is known of them, its limits, and its failure."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np


class StageClock(threading.local):
    """CPU seconds of the current thread by stage ("pdq", "view", "normalise", ...), for the benchmarks'
    accounting of where a picture's CPU goes (decodes run in threads: one tally per thread)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def reset(self) -> None:
        self.spent = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.thread_time()
        try:
            yield
        finally:
            self.add(stage, time.thread_time() - started)

    def add(self, stage: str, seconds: float) -> None:
        self.spent[stage] = self.spent.get(stage, 0.0) + seconds


clock = StageClock()


class DecodeFailure(Exception):
    """Raised inside this module only; callers receive the message as data."""


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 64_000_000
    max_frames: int = 32  # distinct frames (or pictures) scored per file
    max_decoded_frames: int = 3_000  # frames read to find them; longer videos: keyframes only
    coverage: str = "center"  # "center" | "full"
    max_tiles: int = 16  # with coverage "full": tiles per frame along the long side
    max_decoded_pixels: int = 2_000_000_000  # all frames of one file together (about 30 s of decoding)
    max_rows: int = 128  # model inputs per file; centre crops first, then tiles (bounds memory and time)
    # "exact": open_clip's resize; "reduced": a box reduction first; "thumbnail512": fedi-safety's thumbnail to
    # fit 512 px first, large JPEGs drafted (model/preprocess.py)
    resize: str = "exact"
    jpeg_decoder: str = "pillow"  # or nvImageCodec's "nvimgcodec-gpu" / "nvimgcodec-cpu" (scan/gpujpeg.py)
    # The bundle has DeepDanbooru and the policy asks for it: keep the first frame's 512 thumbnail (what
    # fedi-safety hands horde-safety's DeepDanbooru), for the pictures the policy will call anime.
    deepdanbooru: bool = False


@dataclass
class Decoded:
    format: str
    pixels: np.ndarray  # float32 [rows, 3, H, W]
    total_frames: int
    labels: list[str] = field(default_factory=list)  # per row: where it comes from ("frame 3, tile 2/4")
    pdq: list[tuple[str, int]] = field(default_factory=list)  # per scored frame: PDQ hash and quality
    pdq_variants: list[str] = field(default_factory=list)  # every frame's 8 rotations/mirrors, for matching
    notes: list[str] = field(default_factory=list)  # per file: partial decode, caps hit, pictures skipped
    partial: bool = False
    vpdq: list[tuple[str, int, float]] = field(default_factory=list)  # videos, animations: a PDQ per second
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds by stage (StageClock), for benchmarks
    dd_view: np.ndarray | None = None  # with Limits.deepdanbooru: the first frame's 512 thumbnail, RGB uint8


def decode_detail(decoded: Decoded) -> dict | None:
    """What is stored with a result: row labels (only when they say more than "image") and notes."""
    detail: dict = {}
    if decoded.labels != ["image"]:
        detail["labels"] = decoded.labels
    if decoded.notes:
        detail["notes"] = decoded.notes
    if decoded.partial:
        detail["partial"] = True
    return detail or None
