"""The synthetic test images of ``sqsam bench``: smooth noise with flat shapes, JPEG-encoded in memory.

Coordinates are image pixels, x = column, y = row.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Shape:
    kind: str  # "ellipse" or "rect", axis-aligned
    cx: float
    cy: float
    rx: float
    ry: float

    def contains(self, x: float, y: float) -> bool:
        dx, dy = (x - self.cx) / self.rx, (y - self.cy) / self.ry
        return dx * dx + dy * dy <= 1.0 if self.kind == "ellipse" else abs(dx) <= 1.0 and abs(dy) <= 1.0


@dataclass
class SyntheticImage:
    width: int
    height: int
    jpeg: bytes
    shapes: list[Shape] = field(default_factory=list)

    @property
    def target(self) -> Shape:
        """The shape drawn last (on top): clicks inside it are on the object."""
        return self.shapes[-1]


def synthetic_rgb(width: int, height: int, seed: int = 0) -> tuple[np.ndarray, list[Shape]]:
    """Smooth colour noise with flat ellipses and rectangles and a fine grain, ``(H, W, 3)`` uint8."""
    import cv2

    rng = np.random.default_rng(seed)
    grid = rng.integers(40, 210, size=(max(2, height // 120), max(2, width // 120), 3), dtype=np.uint8)
    rgb = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    shapes = []
    for i in range(5):
        kind = "ellipse" if i % 2 == 0 else "rect"
        cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
        rx, ry = rng.uniform(0.07, 0.18) * width, rng.uniform(0.07, 0.18) * height
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if kind == "ellipse":
            cv2.ellipse(rgb, (int(cx), int(cy)), (max(1, int(rx)), max(1, int(ry))), 0, 0, 360, color, -1)
        else:
            cv2.rectangle(rgb, (int(cx - rx), int(cy - ry)), (int(cx + rx), int(cy + ry)), color, -1)
        shapes.append(Shape(kind, cx, cy, max(1.0, rx), max(1.0, ry)))
    for r0 in range(0, height, 256):  # grain, in row blocks to keep memory low for 12 MP
        block = rgb[r0:r0 + 256]
        noise = rng.integers(-6, 7, size=block.shape, dtype=np.int16)
        block[...] = np.clip(block.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return rgb, shapes


def synthetic_jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> SyntheticImage:
    from PIL import Image

    rgb, shapes = synthetic_rgb(width, height, seed)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return SyntheticImage(width, height, buf.getvalue(), shapes)


def click_sequence(image: SyntheticImage, n: int, rng: np.random.Generator) -> list[tuple[float, float, bool]]:
    """A plausible interaction: first click near the target's centre, then clicks around it,
    positive when inside the target and negative outside."""
    t = image.target
    clicks = []
    for i in range(n):
        if i == 0:
            x, y = t.cx + rng.uniform(-0.3, 0.3) * t.rx, t.cy + rng.uniform(-0.3, 0.3) * t.ry
        else:
            x, y = t.cx + rng.uniform(-1.4, 1.4) * t.rx, t.cy + rng.uniform(-1.4, 1.4) * t.ry
        x = float(np.clip(x, 0, image.width - 1))
        y = float(np.clip(y, 0, image.height - 1))
        clicks.append((x, y, t.contains(x, y)))
    return clicks

