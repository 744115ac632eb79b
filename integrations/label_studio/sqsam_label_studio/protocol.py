"""Label Studio payloads <-> sqsam prompts and masks (no model logic here).

Interactive context, as Label Studio's frontend sends it (``params.context`` of ``/predict``)::

    {"result": [
      {"type": "keypointlabels", "from_name": "kp", "to_name": "image",
       "original_width": 640, "original_height": 480, "image_rotation": 0,
       "value": {"x": 41.2, "y": 60.0, "width": 0.5, "keypointlabels": ["Object"]},
       "is_positive": true},                      # Alt-click: false; the key may be missing
      {"type": "rectanglelabels", ...,
       "value": {"x": 10, "y": 20, "width": 30, "height": 40, "rectanglelabels": ["Object"]}}
    ]}

Coordinates are percent of the original image size (0-100). Prompts go through the shared
rules of :func:`sqsam_core.prompts.validate_prompt` (the CLI and the CVAT functions use them
too): at most ``SQSAM_MAX_CLICKS`` clicks per object, boxes must enclose at least one pixel.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sqsam_core.errors import InvalidPromptError
from sqsam_core.prompts import finite_number, max_clicks_setting, validate_prompt

from .labelconfig import Control, LabelConfig

PERCENT_TOLERANCE = 1e-6


@dataclass
class Prompt:
    """Clicks and box in percent of the image; ``label`` is what the user picked."""

    to_name: str | None
    clicks: list[tuple[float, float, bool]] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None  # x, y, width, height in percent
    label: str | None = None

    @property
    def has_positive(self) -> bool:
        return self.box is not None or any(positive for _, _, positive in self.clicks)

    def to_pixels(self, width: int, height: int, max_clicks: int | None = None):
        """``(clicks, box)`` in sqsam pixel coordinates (x = column; pixel centres at integers).

        Checked by the shared prompt rules: a box must cover at least one pixel each way.
        """
        clicks = []
        for x, y, positive in self.clicks:
            px = min(max(x / 100.0 * width - 0.5, 0.0), width - 1.0)
            py = min(max(y / 100.0 * height - 0.5, 0.0), height - 1.0)
            clicks.append((px, py, positive))
        corners = None
        if self.box is not None:
            x, y, w, h = self.box
            corners = tuple(min(max(v, 0.0), float(limit)) for v, limit in (
                (x / 100.0 * width, width), (y / 100.0 * height, height),
                ((x + w) / 100.0 * width, width), ((y + h) / 100.0 * height, height)))
        clicks, checked, _ = validate_prompt(clicks, corners, height, width, max_clicks=max_clicks)
        box = None
        if checked is not None:  # pixel corners -> the inclusive last pixel the model expects
            x0, y0 = checked[:2]
            box = (x0, y0, max(x0, corners[2] - 1.0), max(y0, corners[3] - 1.0))
        return clicks, box


def _number(value: Any, what: str) -> float:
    if isinstance(value, str):  # Label Studio sends numbers; tolerate numeric strings
        try:
            value = float(value)
        except ValueError:
            raise InvalidPromptError(f"{what} must be a number, got {value[:40]!r}") from None
    return finite_number(value, what)


def _percent(value: Any, what: str) -> float:
    v = _number(value, what)
    if v < -PERCENT_TOLERANCE or v > 100 + PERCENT_TOLERANCE:
        raise InvalidPromptError(f"{what} = {v:g} is outside 0-100 (percent of the image size)")
    return min(max(v, 0.0), 100.0)


def _positive(item: dict, value: dict) -> bool:
    flag = item.get("is_positive", value.get("is_positive", True))
    if isinstance(flag, str):
        return flag.strip().lower() not in ("false", "0", "no", "")
    return bool(flag) if flag is not None else True


def _label_of(item: dict, value: dict, kind: str) -> str | None:
    for key in (kind, "labels"):
        labels = value.get(key)
        if isinstance(labels, list) and labels and isinstance(labels[0], str):
            return labels[0]
    return None


def parse_context(context: Any, max_clicks: int | None = None) -> Prompt | None:
    """The prompt of an interactive request; None when there is no interactive context.

    Raises :class:`InvalidPromptError` (-> HTTP 422) for a context without keypoints or
    rectangles, with coordinates that are not numbers in 0-100, or with more than
    ``max_clicks`` keypoints (default ``SQSAM_MAX_CLICKS``).
    """
    limit = max_clicks_setting() if max_clicks is None else max_clicks
    if context is None:
        return None
    if not isinstance(context, dict):
        raise InvalidPromptError("params.context must be an object with a 'result' list")
    if "result" not in context:
        if any(k.startswith("project_credentials") for k in context) or not context:
            return None  # Label Studio adds credentials even to non-interactive requests
        raise InvalidPromptError("params.context has no 'result' list of keypoints or rectangles")
    items = context.get("result")
    if not isinstance(items, list):
        raise InvalidPromptError("params.context.result must be a list of regions")
    prompt = Prompt(to_name=None)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidPromptError(f"params.context.result[{i}] must be an object")
        kind = str(item.get("type", "")).lower()
        if kind not in ("keypointlabels", "rectanglelabels", "keypoint", "rectangle"):
            continue
        value = item.get("value")
        if not isinstance(value, dict):
            raise InvalidPromptError(f"params.context.result[{i}] has no 'value' object")
        where = f"{kind} {i}"
        x = _percent(value.get("x"), f"{where}: x")
        y = _percent(value.get("y"), f"{where}: y")
        if kind.startswith("keypoint"):
            if len(prompt.clicks) >= limit:
                raise InvalidPromptError(f"more than {limit} keypoints on one object; at most {limit} are "
                                         f"accepted (SQSAM_MAX_CLICKS)")
            prompt.clicks.append((x, y, _positive(item, value)))
        else:
            w = _number(value.get("width"), f"{where}: width")
            h = _number(value.get("height"), f"{where}: height")
            if w < 0 or h < 0:
                raise InvalidPromptError(f"{where}: width and height must not be negative")
            _percent(x + w, f"{where}: x + width")
            _percent(y + h, f"{where}: y + height")
            prompt.box = (x, y, min(w, 100.0 - x), min(h, 100.0 - y))  # the latest rectangle wins
        to_name = item.get("to_name")
        if prompt.to_name is None and isinstance(to_name, str):
            prompt.to_name = to_name
        label = _label_of(item, value, "keypointlabels" if kind.startswith("keypoint") else "rectanglelabels")
        if label is not None:
            prompt.label = label
    if not prompt.clicks and prompt.box is None:
        raise InvalidPromptError("the interactive context holds no keypoint or rectangle to segment from")
    return prompt


def _region_id() -> str:
    return uuid.uuid4().hex[:10]


def mask_regions(mask: np.ndarray, score: float, control: Control, label: str | None, to_name: str,
                 polygon_tolerance: float = 1.0) -> list[dict]:
    """Label Studio result regions for one ``(H, W)`` bool mask and one output control.

    Brush: one RLE region. Polygon: one region per separate part (holes filled), largest first.
    An empty mask gives no region.
    """
    from sqsam_core import formats

    if not mask.any():
        return []
    height, width = mask.shape
    labels = [label] if label is not None else []
    base = {
        "from_name": control.name,
        "to_name": to_name,
        "type": control.type,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "score": float(score),
        "readonly": False,
    }
    if control.type == "brushlabels":
        value = {"format": "rle", "rle": formats.mask_to_ls_rle(mask), "brushlabels": labels}
        return [dict(base, id=_region_id(), value=value)]
    regions = []
    for points in formats.mask_to_polygons_percent(mask, simplify_tolerance=polygon_tolerance):
        value = {"points": points, "polygonlabels": labels, "closed": True}
        regions.append(dict(base, id=_region_id(), value=value))
    return regions


def prediction(regions: list[dict], score: float | None, model_version: str) -> dict:
    return {"result": regions, "score": float(score) if score is not None else 0.0, "model_version": model_version}


def outputs_or_error(config: LabelConfig, image_name: str) -> list[Control]:
    outputs = config.outputs_for(image_name)
    if not outputs:
        raise InvalidPromptError(
            f"the labeling config has no BrushLabels or PolygonLabels control with toName=\"{image_name}\"; "
            f"sqsam answers with masks or polygons")
    return outputs
