"""One validation for prompts (clicks, boxes, previous masks), shared by every interface.

The CLI (``sqsam predict``), the Label Studio backend and the CVAT functions all call
:func:`validate_prompt`, so the same prompt gets the same answer everywhere. Coordinates are
image pixels, ``x`` = column, ``y`` = row, over the closed range ``[0, width] x [0, height]``
(tools that send percentages or pixel corners reach the far edge).

Rules:

* a click is ``(x, y, positive)`` with finite ``x``, ``y`` inside that range; at most
  ``max_clicks`` of them per object (``SQSAM_MAX_CLICKS``, default 64: every click costs one
  network pass when a tool replays its history);
* a box is ``(x0, y0, x1, y1)`` with finite corners inside that range (corners are sorted);
  it must enclose at least :data:`MIN_BOX_SIDE` pixel in each direction: a zero-size box is
  refused, never silently dropped;
* a previous mask is an ``(height, width)`` array;
* ``require_positive``: at least one positive click or a box.

Returned clicks and boxes are clipped to the last pixel (``width - 1``, ``height - 1``), the
convention :class:`sqsam_core.SqueezeSAM` uses. Every failure raises
:class:`~sqsam_core.errors.InvalidPromptError` with a one-line message.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from sqsam_core.errors import InvalidPromptError

#: Clicks per object accepted when ``SQSAM_MAX_CLICKS`` is unset.
DEFAULT_MAX_CLICKS = 64
#: A box narrower or lower than this (pixels) encloses no area.
MIN_BOX_SIDE = 1.0

Click = tuple[float, float, bool]
Box = tuple[float, float, float, float]


def max_clicks_setting(env=os.environ) -> int:
    """``SQSAM_MAX_CLICKS`` as a positive int (default :data:`DEFAULT_MAX_CLICKS`)."""
    raw = env.get("SQSAM_MAX_CLICKS")
    if raw is None or not raw.strip():
        return DEFAULT_MAX_CLICKS
    try:
        value = int(raw)
    except ValueError:
        raise InvalidPromptError(f"SQSAM_MAX_CLICKS must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise InvalidPromptError(f"SQSAM_MAX_CLICKS must be a positive integer, got {raw!r}")
    return value


def finite_number(value: Any, what: str) -> float:
    """``value`` as a finite float (bools and strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidPromptError(f"{what} must be a number, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise InvalidPromptError(f"{what} must be finite, got {_show(value)}") from None
    if not math.isfinite(number):
        raise InvalidPromptError(f"{what} must be finite, got {_show(value)}")
    return number


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _inside(x: float, y: float, width: int, height: int) -> bool:
    return 0.0 <= x <= width and 0.0 <= y <= height


def validate_clicks(clicks: Sequence | None, height: int, width: int,
                    max_clicks: int | None = None, what: str = "click") -> list[Click]:
    """``[(x, y, positive), ...]`` checked against an ``height x width`` image, clipped to its last pixel."""
    if clicks is None:
        return []
    limit = max_clicks_setting() if max_clicks is None else int(max_clicks)
    clicks = list(clicks)
    if len(clicks) > limit:
        raise InvalidPromptError(f"{len(clicks)} clicks on one object; at most {limit} are accepted "
                                 f"(SQSAM_MAX_CLICKS)")
    out: list[Click] = []
    for i, click in enumerate(clicks):
        if not isinstance(click, (tuple, list)) or len(click) != 3:
            raise InvalidPromptError(f"{what} {i} must be (x, y, positive), got {_show(click)}")
        x = finite_number(click[0], f"{what} {i}: x")
        y = finite_number(click[1], f"{what} {i}: y")
        if not _inside(x, y, width, height):
            raise InvalidPromptError(f"{what} {i} at ({x:g}, {y:g}) is outside the {width}x{height} image")
        out.append((min(x, width - 1.0), min(y, height - 1.0), bool(click[2])))
    return out


def validate_box(box: Sequence | None, height: int, width: int, what: str = "box") -> Box | None:
    """``(x0, y0, x1, y1)`` checked (inside the image, encloses area), corners sorted, clipped."""
    if box is None:
        return None
    if not isinstance(box, (tuple, list, np.ndarray)) or len(box) != 4:
        raise InvalidPromptError(f"{what} must be (x0, y0, x1, y1), got {_show(box)}")
    x0, y0, x1, y1 = (finite_number(v, what) for v in box)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    if not (_inside(x0, y0, width, height) and _inside(x1, y1, width, height)):
        raise InvalidPromptError(f"{what} ({x0:g}, {y0:g})-({x1:g}, {y1:g}) is outside the {width}x{height} image")
    if x1 - x0 < MIN_BOX_SIDE or y1 - y0 < MIN_BOX_SIDE:
        raise InvalidPromptError(f"{what} ({x0:g}, {y0:g})-({x1:g}, {y1:g}) encloses no area "
                                 f"(each side must be at least {MIN_BOX_SIDE:g} pixel)")
    return (x0, y0, min(x1, width - 1.0), min(y1, height - 1.0))


def validate_mask(mask: Any, height: int, width: int, what: str = "previous mask") -> np.ndarray | None:
    """An ``(height, width)`` mask as bool, or None."""
    if mask is None:
        return None
    array = np.asarray(mask)
    if array.shape != (height, width):
        raise InvalidPromptError(f"{what} has shape {array.shape}, expected ({height}, {width})")
    if array.dtype != bool:
        if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
            raise InvalidPromptError(f"{what} must hold finite numbers or booleans")
        array = array > 0
    return array


def validate_prompt(clicks: Sequence | None, box: Sequence | None, height: int, width: int, *,
                    mask: Any = None, max_clicks: int | None = None, require_positive: bool = False):
    """Validate one object's prompt against an ``height x width`` image.

    Returns ``(clicks, box, mask)``: clicks ``[(x, y, positive)]`` and box ``(x0, y0, x1, y1)``
    clipped to the last pixel (x = column), mask ``(height, width)`` bool or None.
    """
    clicks = validate_clicks(clicks, height, width, max_clicks)
    box = validate_box(box, height, width)
    mask = validate_mask(mask, height, width)
    if require_positive and box is None and not any(positive for _, _, positive in clicks):
        raise InvalidPromptError("no positive click: click inside the object at least once (or give a box)")
    return clicks, box, mask
