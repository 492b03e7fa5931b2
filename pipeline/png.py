"""A tiny PNG writer and the one chart vidcat draws with it (pure numpy + zlib).

matplotlib is not a dependency (it is not installed on the development machine, and a
nightly job does not need a plotting stack for one histogram), so the near-duplicate run's
histogram of nearest-neighbour similarities is drawn here: bars, axes, tick labels in a
3x5 pixel font, and a red line at the run's similarity threshold.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

#: 3x5 glyphs of the characters tick labels use, one row of 3 bits per line.
_GLYPHS = {
    "0": (7, 5, 5, 5, 7),
    "1": (2, 6, 2, 2, 7),
    "2": (7, 1, 7, 4, 7),
    "3": (7, 1, 7, 1, 7),
    "4": (5, 5, 7, 1, 1),
    "5": (7, 4, 7, 1, 7),
    "6": (7, 4, 7, 5, 7),
    "7": (7, 1, 1, 1, 1),
    "8": (7, 5, 7, 5, 7),
    "9": (7, 5, 7, 1, 7),
    ".": (0, 0, 0, 0, 2),
    "e": (0, 7, 7, 4, 7),
    "+": (0, 2, 7, 2, 0),
}


def encode_png(rgb: np.ndarray) -> bytes:
    """An RGB uint8 `[H, W, 3]` image as PNG bytes (8-bit truecolour, no filtering)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected [H, W, 3] RGB, got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


def _text(img: np.ndarray, x: int, y: int, text: str, scale: int = 2) -> None:
    """Draw `text` (characters of :data:`_GLYPHS`) with its top-left corner at `(x, y)`."""
    for char in text:
        for row, bits in enumerate(_GLYPHS.get(char, (0,) * 5)):
            for col in range(3):
                if bits >> (2 - col) & 1:
                    y0, x0 = y + row * scale, x + col * scale
                    img[max(y0, 0) : y0 + scale, max(x0, 0) : x0 + scale] = 0
        x += 4 * scale


def histogram_png(
    counts: np.ndarray,
    lo: float,
    hi: float,
    marker: float | None = None,
    width: int = 640,
    height: int = 320,
) -> bytes:
    """A bar chart of `counts` over equal bins from `lo` to `hi`, heights log10(1 + count).

    Log heights because the duplicates are a thin tail beside the bulk of the catalog. The
    x axis is labelled at every tenth of the range, the y axis at each power of ten, and a
    red vertical line marks `marker` (the similarity threshold 1 - eps).
    """
    counts = np.asarray(counts, np.float64)
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 44, width - 12, 12, height - 28
    plot_w, plot_h = right - left, bottom - top
    heights = np.log10(1 + counts)
    scale = max(float(heights.max()), 1.0)
    for i, h in enumerate(heights):
        x0 = left + int(i * plot_w / len(counts))
        x1 = max(x0 + 1, left + int((i + 1) * plot_w / len(counts)) - 1)
        bar = round(h / scale * plot_h)
        if bar:
            img[bottom - bar : bottom, x0:x1] = (70, 110, 180)
    img[bottom, left:right] = 0
    img[top:bottom, left] = 0
    for tick in range(11):
        x = left + int(tick * plot_w / 10)
        img[bottom : bottom + 4, x] = 0
        if tick % 2 == 0:
            label = f"{lo + tick * (hi - lo) / 10:.2f}"
            _text(img, min(x - len(label) * 4, width - len(label) * 8), bottom + 8, label)
    for power in range(int(scale) + 1):
        y = bottom - round(power / scale * plot_h)
        img[y, left - 4 : left] = 0
        _text(img, 4, y - 5, f"1e{power}" if power else "1")
    if marker is not None and lo <= marker <= hi:
        x = left + round((marker - lo) / (hi - lo) * plot_w)
        img[top:bottom, max(x - 1, left) : x + 1] = (220, 30, 30)
    return encode_png(img)
