"""Turning a visit's picture into what the model needs, cheaply: JPEGs are decoded at a reduced
scale (libjpeg's DCT scaling, 2-4x cheaper) when the model's input is smaller anyway, and the boxes
are mapped back to the picture's own pixels, where zones and evidence live."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from core.model import Detection

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


class NotAPicture(ValueError):
    """Bytes that are not a decodable JPEG."""


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the JPEG's frame header, without decoding; None if there is none."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF:
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return (w, h) if w and h else None
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            return None
        i += 2 + length
    return None


def reduction(size: tuple[int, int], input_size: int) -> int:
    """The largest JPEG scale-down (1, 2, 4, 8) that keeps the picture's long side >= the model input."""
    long_side = max(size)
    for f in (8, 4, 2):
        if long_side // f >= input_size:
            return f
    return 1


def decode_for_model(data: bytes, input_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The decoded (possibly reduced) image and the picture's full (width, height)."""
    size = jpeg_size(data)
    if size is None:
        raise NotAPicture(f"not a JPEG (starts with {data[:4].hex()})")
    f = reduction(size, input_size)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _REDUCED[f] if f > 1 else cv2.IMREAD_COLOR)
    if image is None:
        raise NotAPicture(f"a {size[0]}x{size[1]} JPEG that does not decode")
    return image, size


def to_picture_pixels(detections: list[Detection], image_size: tuple[int, int],
                      picture_size: tuple[int, int]) -> list[Detection]:
    sx, sy = picture_size[0] / image_size[0], picture_size[1] / image_size[1]
    if sx == 1 and sy == 1:
        return detections
    return [replace(d, box=(d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy)) for d in detections]
