"""The one font of every image the gateway draws: a CJK font, so zone, street and site names in
Chinese are drawn as characters, not as missing-glyph boxes (Pillow's built-in font and OpenCV's
Hershey fonts have no CJK glyphs at all).

The font is found once per process: `CITYGATE_FONT` (a .ttf/.otf/.ttc file) if set, else the
first of the usual system locations (Debian/Ubuntu `fonts-wqy-microhei`, `fonts-noto-cjk`,
`fonts-wqy-zenhei`, `fonts-droid-fallback`; the Docker image installs `fonts-wqy-microhei`).
Without one, Pillow's default font is used and one warning says what to install.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

FONT_ENV = "CITYGATE_FONT"
CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/msyh.ttc",
)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@cache
def cjk_font_path() -> Path | None:
    """The CJK font file in use, or None when there is none on this machine."""
    configured = os.environ.get(FONT_ENV)
    if configured:
        if Path(configured).is_file():
            return Path(configured)
        log.warning("%s=%s is not a file; looking for a CJK font elsewhere", FONT_ENV, configured)
    for candidate in CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    log.warning("no CJK font found: Chinese names in evidence images will be drawn as boxes; install "
                "fonts-wqy-microhei (Debian/Ubuntu) or set %s to a .ttf/.otf/.ttc file", FONT_ENV)
    return None


@cache
def font(size: int = 14) -> Font:
    """The drawing font at `size` pixels, loaded once per size (loading costs a few milliseconds)."""
    path = cjk_font_path()
    if path is not None:
        try:
            return ImageFont.truetype(str(path), size)
        except OSError as exc:
            log.warning("cannot load font %s: %s", path, exc)
    return ImageFont.load_default(size)


def draw_label_bgr(img: np.ndarray, text: str, x: int, y: int, bg: tuple[int, int, int],
                   fg: tuple[int, int, int], size: int) -> None:
    """Text on a filled background into a BGR (OpenCV) image, in place; (x, y) is the bottom-left
    corner of the background, kept inside the image."""
    f = font(size)
    left, top, right, bottom = f.getbbox(text)
    tw, th = right - min(left, 0) + 4, bottom - min(top, 0) + 4
    h, w = img.shape[:2]
    x = int(min(max(0, x), max(0, w - tw)))
    y = int(min(max(th, y), h))
    x1, y1 = min(w, x + tw), max(0, y - th)
    if x1 <= x or y <= y1:
        return
    box = Image.new("RGB", (x1 - x, y - y1), bg[::-1])
    ImageDraw.Draw(box).text((2 - min(left, 0), 2 - min(top, 0)), text, font=f, fill=fg[::-1])
    img[y1:y, x:x1] = np.asarray(box)[:, :, ::-1]
