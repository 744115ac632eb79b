"""Overlay PNGs: masks tinted over the image, crisp contours, clicks and the box drawn on top.

This is what a person looks at to judge a mask, so the drawing is tuned for legibility at any
image size: line widths and click radii scale with the image, clicks are filled discs with a
white ring and a thin dark halo (visible on light and dark backgrounds alike), positive clicks
green and negative red, and mask colours avoid green and red so clicks never blend in.
"""

from __future__ import annotations

import colorsys
from typing import Iterable, Sequence

import cv2
import numpy as np

from sqsam_core.errors import InvalidPromptError
from sqsam_core.imageio import to_rgb_array

__all__ = ["render_overlay", "mask_color", "POSITIVE_COLOR", "NEGATIVE_COLOR", "BOX_COLOR"]

#: RGB colours of positive / negative clicks and of the box.
POSITIVE_COLOR = (40, 200, 70)
NEGATIVE_COLOR = (235, 45, 45)
BOX_COLOR = (255, 210, 0)

# Distinct mask colours (RGB), chosen to stay clear of the click colours; more are generated.
_PALETTE = (
    (30, 144, 255),   # dodger blue
    (255, 140, 0),    # dark orange
    (186, 85, 211),   # orchid
    (0, 206, 209),    # turquoise
    (255, 215, 0),    # gold
    (255, 105, 180),  # hot pink
    (100, 149, 237),  # cornflower
    (210, 180, 140),  # tan
    (147, 112, 219),  # medium purple
    (64, 224, 208),   # aqua
)

_SUBPIXEL_SHIFT = 4  # cv2 fixed-point bits: clicks land at fractional positions exactly
_SCALE = 1 << _SUBPIXEL_SHIFT


def mask_color(index: int) -> tuple[int, int, int]:
    """The RGB colour of the ``index``-th mask (0-based): a fixed palette, then golden-ratio hues."""
    if index < len(_PALETTE):
        return _PALETTE[index]
    hue = (0.58 + (index - len(_PALETTE)) * 0.618034) % 1.0
    # Skip the greens and reds of the click markers.
    if 0.22 < hue < 0.42:
        hue += 0.2
    if hue > 0.94 or hue < 0.03:
        hue = 0.05
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def render_overlay(
    image,
    masks=(),
    clicks: Iterable[Sequence] = (),
    box: Sequence[float] | None = None,
    alpha: float = 0.5,
    *,
    colors: Sequence[Sequence[int]] | None = None,
    contour: bool = True,
) -> np.ndarray:
    """Draw ``masks``, ``clicks`` and ``box`` over ``image``; returns ``(H, W, 3)`` uint8 RGB.

    ``image``: anything :func:`~sqsam_core.imageio.to_rgb_array` accepts. ``masks``: one
    ``(H, W)`` mask, a ``(K, H, W)`` stack, a list of masks, or objects with a ``.mask``
    attribute (:class:`~sqsam_core.Prediction`); nonzero = object. Later masks are drawn on top.
    ``clicks``: ``(x, y, positive)`` in image pixels (x = column). ``box``: ``(x0, y0, x1, y1)``
    in image pixels or None. ``alpha``: tint opacity in ``[0, 1]``. ``colors``: RGB per mask
    (default :func:`mask_color`). ``contour``: draw each mask's outline.
    """
    rgb = to_rgb_array(image)
    height, width = rgb.shape[:2]
    mask_list = _as_mask_list(masks, height, width)
    if not 0.0 <= float(alpha) <= 1.0:
        raise InvalidPromptError(f"overlay alpha must be in [0, 1], got {alpha}")

    out = rgb.astype(np.float32)
    palette = [tuple(int(c) for c in colors[i]) if colors is not None and i < len(colors) else mask_color(i)
               for i in range(len(mask_list))]
    for mask, color in zip(mask_list, palette):
        if mask.any():
            out[mask] = out[mask] * (1.0 - alpha) + np.asarray(color, np.float32) * alpha
    out = np.rint(out).clip(0, 255).astype(np.uint8)

    size = max(height, width)
    if contour:
        thickness = max(1, int(round(size / 400)))
        for mask, color in zip(mask_list, palette):
            _draw_contour(out, mask, color, thickness)

    if box is not None:
        _draw_box(out, box, size)

    for click in clicks:
        _draw_click(out, click, size)
    return out


def _as_mask_list(masks, height: int, width: int) -> list[np.ndarray]:
    if masks is None:
        return []
    if hasattr(masks, "mask") and not isinstance(masks, np.ndarray):
        masks = [masks.mask]
    if isinstance(masks, np.ndarray):
        if masks.ndim == 2:
            masks = [masks]
        elif masks.ndim == 3:
            masks = list(masks)
        else:
            raise InvalidPromptError(f"masks must be (H, W) or (K, H, W), got shape {masks.shape}")
    out = []
    for i, mask in enumerate(masks):
        if hasattr(mask, "mask") and not isinstance(mask, np.ndarray):
            mask = mask.mask
        mask = np.asarray(mask)
        if mask.shape != (height, width):
            raise InvalidPromptError(
                f"mask {i} has shape {tuple(mask.shape)}, the image is {height}x{width} (rows x columns)"
            )
        out.append(mask.astype(bool, copy=False))
    return out


def _draw_contour(canvas: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], thickness: int) -> None:
    if not mask.any():
        return
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return
    # A dark hairline under a bright line in the mask's colour reads on any background.
    dark = tuple(int(c * 0.35) for c in color)
    cv2.drawContours(canvas, contours, -1, dark, thickness + 2, lineType=cv2.LINE_AA)
    bright = tuple(int(min(255, c + (255 - c) * 0.35)) for c in color)
    cv2.drawContours(canvas, contours, -1, bright, thickness, lineType=cv2.LINE_AA)


def _fixed(value: float) -> int:
    return int(round(float(value) * _SCALE))


def _draw_click(canvas: np.ndarray, click: Sequence, size: int) -> None:
    if len(click) < 2:
        raise InvalidPromptError(f"a click is (x, y, positive), got {tuple(click)!r}")
    x, y = float(click[0]), float(click[1])
    positive = bool(click[2]) if len(click) > 2 else True
    if not (np.isfinite(x) and np.isfinite(y)):
        raise InvalidPromptError(f"click ({click[0]}, {click[1]}) is not a finite point")
    radius = max(5.0, size * 0.011)
    ring = max(1.5, radius * 0.3)
    center = (_fixed(x), _fixed(y))
    fill = POSITIVE_COLOR if positive else NEGATIVE_COLOR
    # halo, white ring, coloured disc
    cv2.circle(canvas, center, _fixed(radius + ring + max(1.0, ring * 0.5)), (20, 20, 20), -1, cv2.LINE_AA,
               _SUBPIXEL_SHIFT)
    cv2.circle(canvas, center, _fixed(radius + ring), (255, 255, 255), -1, cv2.LINE_AA, _SUBPIXEL_SHIFT)
    cv2.circle(canvas, center, _fixed(radius), fill, -1, cv2.LINE_AA, _SUBPIXEL_SHIFT)
    # a + or - glyph so the sign survives colour blindness and greyscale printing
    arm = radius * 0.55
    glyph = max(1, int(round(radius * 0.25)))
    cv2.line(canvas, (_fixed(x - arm), center[1]), (_fixed(x + arm), center[1]), (255, 255, 255), glyph, cv2.LINE_AA,
             _SUBPIXEL_SHIFT)
    if positive:
        cv2.line(canvas, (center[0], _fixed(y - arm)), (center[0], _fixed(y + arm)), (255, 255, 255), glyph,
                 cv2.LINE_AA, _SUBPIXEL_SHIFT)


def _draw_box(canvas: np.ndarray, box: Sequence[float], size: int) -> None:
    if len(box) != 4:
        raise InvalidPromptError(f"a box is (x0, y0, x1, y1), got {tuple(box)!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite(v) for v in (x0, y0, x1, y1)):
        raise InvalidPromptError(f"box {tuple(box)!r} has non-finite coordinates")
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    thickness = max(1, int(round(size / 300)))
    p0, p1 = (_fixed(x0), _fixed(y0)), (_fixed(x1), _fixed(y1))
    cv2.rectangle(canvas, p0, p1, (20, 20, 20), thickness + 2, cv2.LINE_AA, _SUBPIXEL_SHIFT)
    cv2.rectangle(canvas, p0, p1, BOX_COLOR, thickness, cv2.LINE_AA, _SUBPIXEL_SHIFT)
