"""calibrate's picture (`--plot FILE.png`), drawn with Pillow (already a dependency; no plotting library):
the false-positive rate at each severity offset with its 95% band, the number of pictures whose margin
ends at each offset as bars, and the current and the chosen severity marked. Pure: returns an image."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 960, 480
LEFT, RIGHT, TOP, BOTTOM = 70, 70, 40, 60
CURRENT, CHOSEN, RATE, BAND, BARS = (30, 90, 200), (20, 140, 60), (190, 30, 30), (245, 205, 205), (160, 160, 160)


def margins_plot(result, offsets) -> Image.Image:
    """`result`: scan.calibrate.Calibration; `offsets`: the grid it was computed on."""
    import numpy as np

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    grid = [float(o) for o in offsets]
    low, high = grid[0], grid[-1]
    span = (high - low) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(offset: float) -> float:
        return LEFT + (offset - low) / span * plot_w

    top_rate = max([*(p.high for p in result.points), result.target, 1e-4])

    def y_rate(rate: float) -> float:
        return TOP + plot_h - rate / top_rate * plot_h

    critical = result.critical[np.isfinite(result.critical)]
    counts = [int(np.sum(np.isclose(critical, o))) for o in grid]
    top_count = max([*counts, 1])
    bar = max(1.0, plot_w / max(len(grid), 1) * 0.7)
    for offset, count in zip(grid, counts, strict=True):
        if count:
            height = count / top_count * plot_h * 0.9
            draw.rectangle((x_of(offset) - bar / 2, TOP + plot_h - height, x_of(offset) + bar / 2, TOP + plot_h),
                           fill=BARS)  # fmt: skip
    band = [(x_of(p.offset), y_rate(p.high)) for p in result.points]
    band += [(x_of(p.offset), y_rate(p.low)) for p in reversed(result.points)]
    if len(band) >= 3:
        draw.polygon(band, fill=BAND)
    draw.line([(x_of(p.offset), y_rate(p.rate)) for p in result.points], fill=RATE, width=2)
    target_y = y_rate(result.target)
    for x in range(LEFT, LEFT + plot_w, 12):
        draw.line((x, target_y, min(x + 6, LEFT + plot_w), target_y), fill=RATE)
    draw.text((LEFT + plot_w - 150, target_y - 14), f"target {result.target:.2%}", fill=RATE, font=font)
    for offset, colour, name in ((result.current, CURRENT, "current"),
                                 (getattr(result.chosen, "offset", None), CHOSEN, "chosen")):  # fmt: skip
        if offset is None or not low <= offset <= high:
            continue
        x = x_of(offset)
        draw.line((x, TOP, x, TOP + plot_h), fill=colour, width=2)
        draw.text((x + 4, TOP + (2 if name == "current" else 16)), f"{name} {offset:+.4f}", fill=colour, font=font)
    draw.rectangle((LEFT, TOP, LEFT + plot_w, TOP + plot_h), outline="black")
    for i in range(6):  # axes: offsets below, the rate on the left, the pictures on the right
        offset = low + span * i / 5
        draw.text((x_of(offset) - 18, TOP + plot_h + 6), f"{offset:+.3f}", fill="black", font=font)
        rate = top_rate * i / 5
        draw.text((4, y_rate(rate) - 6), f"{rate:.2%}", fill=RATE, font=font)
    for count in count_ticks(top_count):  # whole pictures, each where a bar of that many would end
        draw.text((LEFT + plot_w + 6, TOP + plot_h - plot_h * 0.9 * count / top_count - 6), str(count),
                  fill=(90, 90, 90), font=font)  # fmt: skip
    draw.text((LEFT, 8), f"{result.pictures} benign picture(s): false-positive rate (red, 95% band) by severity "
              "offset; bars: pictures whose margin ends there", fill="black", font=font)  # fmt: skip
    draw.text((LEFT + plot_w / 2 - 60, HEIGHT - 24), "severity offset", fill="black", font=font)
    return image


def count_ticks(top: int, most: int = 6) -> list[int]:
    """Distinct whole counts from 0 to `top` for the pictures' axis, at most `most` of them, evenly spaced
    (0 1 2 3, or 0 20 40 ...): a count is a number of pictures, never a fraction rounded up into repeats."""
    step = max(1, math.ceil(top / (most - 1)))
    ticks = list(range(0, top + 1, step))
    if ticks[-1] == top:
        return ticks
    close = top - ticks[-1] < step / 2 or len(ticks) >= most  # the top itself is shown, never crowded
    return [*ticks[:-1], top] if close else [*ticks, top]


def png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
