"""The evidence chart of a flooding case: the level over the last hours, the ladder's levels as
lines, the crossing that filed the case marked. Drawn with Pillow, not matplotlib: Pillow is already
a dependency (the vehicle maps), a chart is ~10 ms and a few MB, while matplotlib would add ~40 MB
to an edge box's image and ~1 s of import on the case desk's thread for one kind of picture.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timedelta

from PIL import Image, ImageDraw

from core.fonts import font

WIDTH, HEIGHT = 960, 540
LEFT, RIGHT, TOP, BOTTOM = 70, 150, 56, 46
SERIES = (31, 102, 181)
CROSSING = (200, 30, 30)
LEVEL_COLOURS = {"info": (70, 130, 180), "warning": (230, 140, 0), "critical": (200, 30, 30)}
INKS = ((0, 0, 0), (80, 80, 80), (90, 90, 90), (120, 120, 120), (232, 232, 232), SERIES, CROSSING,
        *LEVEL_COLOURS.values())
SHADES = 16  # anti-aliased edges blend an ink into the white page; 16 steps look the same as 256


def _palette() -> Image.Image:
    """Every ink blended with white in SHADES steps: what the drawing can contain, as a PNG palette.
    Pillow maps a pixel to the palette through a cache of 6 bits a channel (the nearest entry to the
    cell's corner), so one colour is kept per cell, white and the inks themselves first, and no shade
    lighter than 240: the page stays white, the inks exact."""
    shades = [shade for k in range(1, SHADES) for ink in INKS
              if min(shade := tuple(round(255 + (c - 255) * k / (SHADES - 1)) for c in ink)) < 240]
    cells: dict[tuple[int, ...], tuple[int, ...]] = {}
    for colour in [(255, 255, 255), *INKS, *shades]:
        cells.setdefault(tuple(c >> 2 for c in colour), colour)
    image = Image.new("P", (1, 1))
    image.putpalette([channel for colour in cells.values() for channel in colour])
    return image


PALETTE = _palette()


@dataclass(frozen=True)
class ChartLine:
    label: str
    value: float
    severity: str


def _level_text(line: ChartLine) -> str:
    """A level's label with its value, unless the label already says it ("积水40cm 禁止通行")."""
    value = f"{line.value:g}"
    return line.label if value in line.label else f"{line.label} {value}"


def _fit(text: str, typeface, width: float) -> str:
    """`text` cut to `width` pixels, ending in an ellipsis when cut (a long level name in the margin)."""
    if typeface.getlength(text) <= width:
        return text
    while text and typeface.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def render_level_chart(*, title: str, unit: str, points: list[tuple[datetime, float]], lines: list[ChartLine],
                       crossing: tuple[datetime, float], crossing_label: str) -> bytes:
    """A PNG: `points` as a line, each of `lines` as a dashed horizontal line with its label at the right,
    the crossing as a red ring with a vertical line and its label."""
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    d = ImageDraw.Draw(img)
    big, small = font(22), font(15)  # the gateway's CJK font (core/fonts.py)
    times = [t for t, _ in points] + [crossing[0]]
    t0, t1 = min(times), max(times)
    if t1 - t0 < timedelta(minutes=10):
        t0 = t1 - timedelta(minutes=10)
    values = [v for _, v in points] + [ln.value for ln in lines] + [crossing[1], 0.0]
    v0, v1 = min(values), max(values) * 1.1 + 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: datetime) -> float:
        return LEFT + (t - t0).total_seconds() / (t1 - t0).total_seconds() * plot_w

    def y(v: float) -> float:
        return TOP + plot_h - (v - v0) / (v1 - v0) * plot_h

    d.text((LEFT, 14), title, fill="black", font=big)
    d.rectangle((LEFT, TOP, LEFT + plot_w, TOP + plot_h), outline=(120, 120, 120))
    for i in range(6):  # value grid and axis labels
        v = v0 + (v1 - v0) * i / 5
        d.line((LEFT, y(v), LEFT + plot_w, y(v)), fill=(232, 232, 232))
        d.text((8, y(v) - 8), f"{v:.0f} {unit}", fill=(80, 80, 80), font=small)
    for i in range(5):  # time axis labels, in the readings' own time zone
        t = t0 + (t1 - t0) * i / 4
        d.text((x(t) - 20, TOP + plot_h + 10), t.strftime("%H:%M"), fill=(80, 80, 80), font=small)
    for ln in lines:
        colour = LEVEL_COLOURS.get(ln.severity, (90, 90, 90))
        for sx in range(LEFT, LEFT + plot_w, 14):
            d.line((sx, y(ln.value), min(sx + 8, LEFT + plot_w), y(ln.value)), fill=colour, width=2)
        d.text((LEFT + plot_w + 8, y(ln.value) - 9), _fit(_level_text(ln), small, RIGHT - 12), fill=colour, font=small)
    if len(points) > 1:
        d.line([(x(t), y(v)) for t, v in points], fill=SERIES, width=3)
    elif points:
        d.ellipse((x(points[0][0]) - 3, y(points[0][1]) - 3, x(points[0][0]) + 3, y(points[0][1]) + 3), fill=SERIES)
    cx, cy = x(crossing[0]), y(crossing[1])
    d.line((cx, TOP, cx, TOP + plot_h), fill=CROSSING, width=1)
    d.ellipse((cx - 9, cy - 9, cx + 9, cy + 9), outline=CROSSING, width=3)
    d.text((min(cx + 12, LEFT + plot_w - 160), TOP + 6), crossing_label, fill=CROSSING, font=small)
    out = io.BytesIO()
    # Saved as a palette PNG: a storm files many cases at once, and an RGB PNG spends 8 ms filtering rows
    # (28 KB) where mapping to the fixed palette and saving takes 2 ms (19 KB), with no visible difference.
    img.quantize(palette=PALETTE, dither=Image.Dither.NONE).save(out, format="PNG", compress_level=1)
    return out.getvalue()
