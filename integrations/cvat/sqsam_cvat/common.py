"""What the nuclio handlers and the cvat-sdk functions share.

CVAT's side of the protocol, as read from CVAT's lambda manager
(``cvat/apps/lambda_manager/views.py``) and cvat-core / cvat-ui:

- Interactor request (nuclio): ``{"image": <base64 frame>, "pos_points": [[x, y], ...],
  "neg_points": [[x, y], ...], "obj_bbox": null | [[x1, y1], [x2, y2]]}``, pixels, x = column.
  Response (cvat-core ``InteractorResults``): ``mask`` (2-D 0/1 rows of the crop), ``bounds``
  (the crop's inclusive ``[x1, y1, x2, y2]`` in the frame), optionally ``points`` (a polygon
  ``[[x, y], ...]``, used when the user converts masks to polygons). We also send ``shapes``
  (``[{"type": "mask", "points": <CVAT mask RLE>, "attributes": [confidence]}]``), the form
  that CVAT versions with agent-based interactors read; older versions ignore it.
- Detector request (nuclio): ``{"image": <base64 frame>, "threshold": <float, optional>}``.
  Response: a list of ``{"confidence", "label", "type": "mask", "mask": [<0/1 bitmap of the
  crop, row-major>, x1, y1, x2, y2], "points": [x, y, x, y, ...]}``. The server run-length
  encodes ``mask`` itself and uses ``points`` instead when the user asks to convert masks to
  polygons.

Errors are ``sqsam_core.errors`` exceptions (``ValueError`` subclasses) with one-line
messages; the nuclio handler turns them into HTTP 400.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import os
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sqsam_core import formats
from sqsam_core.contract import GRANULARITIES
from sqsam_core.errors import ImageTooLargeError, InvalidImageError, InvalidPromptError
from sqsam_core.geometry import mask_box
from sqsam_core.imageio import DEFAULT_MAX_PIXELS, decode_image_bytes, to_rgb_array
from sqsam_core.prompts import finite_number, max_clicks_setting, validate_prompt

Click = tuple[float, float, bool]
Box = tuple[float, float, float, float]

#: Largest frame (width * height) accepted: bigger frames get a clear 400, not an OOM.
MAX_FRAME_PIXELS = int(os.environ.get("SQSAM_CVAT_MAX_PIXELS", DEFAULT_MAX_PIXELS))
#: Largest base64 payload accepted (characters). nuclio's maxRequestBodySize is 32 MiB.
MAX_IMAGE_B64_CHARS = int(os.environ.get("SQSAM_CVAT_MAX_IMAGE_B64", 64 * 2**20))
#: Most clicks accepted on one object (positive and negative together): ``SQSAM_MAX_CLICKS``,
#: the same limit the CLI and the Label Studio backend apply (``sqsam_core.prompts``).
MAX_POINTS = max_clicks_setting()
#: Detector defaults (nuclio: environment; cvat-sdk function: -p parameters).
DEFAULT_MAX_OBJECTS = int(os.environ.get("SQSAM_CVAT_MAX_OBJECTS", 5))
DEFAULT_MIN_SCORE = float(os.environ.get("SQSAM_CVAT_MIN_SCORE", 0.5))
DEFAULT_LABEL = os.environ.get("SQSAM_CVAT_LABEL", "object")


def default_granularity(value: Any = None) -> str:
    """``value`` (a request's or a function parameter's), else ``$SQSAM_GRANULARITY``, else ``"whole"``."""
    value = value if value not in (None, "") else (os.environ.get("SQSAM_GRANULARITY") or "whole")
    if value not in GRANULARITIES:
        raise InvalidPromptError(f"granularity must be one of {', '.join(GRANULARITIES)}, not {value!r}")
    return value


def load_model(path: str | None = None):
    """The core model: ``path``, else ``$SQSAM_MODEL``, else the bundled ONNX file."""
    from sqsam_core import SqueezeSAM

    path = path or os.environ.get("SQSAM_MODEL") or None
    return SqueezeSAM(path) if path else SqueezeSAM()


# ------------------------------------------------------------------------------------------
# Frames
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """A decoded frame: ``image`` is HxWx3 uint8 RGB; ``key`` identifies its content.

    ``key`` doubles as the core's ``cache_key``, so its preprocessing is reused across clicks.
    """

    image: np.ndarray
    key: str

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


def frame_from_image(image) -> Frame:
    """A Frame from a PIL image or array (the cvat-sdk functions get PIL images)."""
    rgb = to_rgb_array(image)
    if rgb.shape[0] * rgb.shape[1] > MAX_FRAME_PIXELS:
        raise ImageTooLargeError(
            f"the frame is {rgb.shape[1]}x{rgb.shape[0]}, over the {MAX_FRAME_PIXELS / 1e6:g} MP limit"
        )
    digest = hashlib.sha1(repr(rgb.shape).encode())
    digest.update(rgb.data)
    return Frame(rgb, "px:" + digest.hexdigest())


def _decode_base64(data: Any) -> bytes:
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("ascii", errors="replace")
    if not isinstance(data, str) or not data:
        raise InvalidImageError("'image' must be a non-empty base64 string")
    if len(data) > MAX_IMAGE_B64_CHARS:
        raise InvalidImageError(f"'image' is {len(data)} base64 characters, over the {MAX_IMAGE_B64_CHARS} limit")
    if data.startswith("data:") and "," in data[:100]:  # tolerate a data: URL
        data = data.split(",", 1)[1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError("'image' is not valid base64") from None


def _raw_key(raw: bytes) -> str:
    return "b64:" + hashlib.sha1(raw).hexdigest()


def _decode_raw(raw: bytes) -> Frame:
    # The core's safe decoder: the size limit is checked from the header, before decoding.
    return Frame(decode_image_bytes(raw, max_pixels=MAX_FRAME_PIXELS, name="'image'"), _raw_key(raw))


def decode_frame(data: Any) -> Frame:
    """Decode CVAT's base64 frame (JPEG, PNG, ...); InvalidImageError with a clear message."""
    return _decode_raw(_decode_base64(data))


class FrameCache:
    """A small LRU of decoded frames keyed by the hash of the encoded frame.

    CVAT sends the whole frame with every click; decoding it again is wasted work. The
    core caches its own preprocessing under the same key (``cache_key=frame.key``).
    """

    def __init__(self, maxsize: int = 4) -> None:
        self._maxsize = maxsize
        self._items: collections.OrderedDict[str, Frame] = collections.OrderedDict()
        self._lock = threading.Lock()

    def decode(self, data: Any) -> Frame:
        raw = _decode_base64(data)
        key = _raw_key(raw)
        with self._lock:
            frame = self._items.get(key)
            if frame is not None:
                self._items.move_to_end(key)
                return frame
        frame = _decode_raw(raw)
        with self._lock:
            self._items[key] = frame
            while len(self._items) > self._maxsize:
                self._items.popitem(last=False)
        return frame


# ------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------


def _point(value: Any, what: str, frame: Frame) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InvalidPromptError(f"{what} must be an [x, y] pair, got {value!r}")
    x, y = finite_number(value[0], what), finite_number(value[1], what)
    # CVAT pixel coordinates run over [0, W] x [0, H]; the core clips the far edge.
    if not (0 <= x <= frame.width and 0 <= y <= frame.height):
        raise InvalidPromptError(f"{what} ({x:g}, {y:g}) is outside the {frame.width}x{frame.height} frame")
    return x, y


def parse_points(value: Any, name: str, frame: Frame) -> list[tuple[float, float]]:
    """``[[x, y], ...]`` (or None) in frame pixels -> list of (x, y); validated."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise InvalidPromptError(f"'{name}' must be a list of [x, y] points, got {type(value).__name__}")
    if len(value) > MAX_POINTS:
        raise InvalidPromptError(f"'{name}' has {len(value)} points; at most {MAX_POINTS} are accepted")
    return [_point(p, f"{name}[{i}]", frame) for i, p in enumerate(value)]


def parse_box(value: Any, frame: Frame) -> Box | None:
    """CVAT's ``obj_bbox`` (``[[x1, y1], [x2, y2]]``, also flat ``[x1, y1, x2, y2]``) or None/[]."""
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return None
    if isinstance(value, (list, tuple)) and len(value) == 4 and not isinstance(value[0], (list, tuple)):
        value = [value[:2], value[2:]]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InvalidPromptError(f"'obj_bbox' must be [[x1, y1], [x2, y2]], got {value!r}")
    (xa, ya), (xb, yb) = (_point(p, f"obj_bbox[{i}]", frame) for i, p in enumerate(value))
    x0, x1 = sorted((xa, xb))
    y0, y1 = sorted((ya, yb))
    validate_prompt(None, (x0, y0, x1, y1), frame.height, frame.width)  # the shared rules: encloses area
    return (x0, y0, x1, y1)


def parse_threshold(value: Any) -> float | None:
    """The detector's ``threshold`` (number or numeric string in [0, 1]) or None."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InvalidPromptError(f"'threshold' must be a number in [0, 1], got {value!r}") from None
    value = finite_number(value, "'threshold'")
    if not 0 <= value <= 1:
        raise InvalidPromptError(f"'threshold' must be in [0, 1], got {value:g}")
    return value


def require_prompt(pos: Sequence, box: Box | None) -> None:
    if not pos and box is None:
        raise InvalidPromptError("no positive points: click inside the object at least once (or draw a box)")


# ------------------------------------------------------------------------------------------
# Click order across requests
# ------------------------------------------------------------------------------------------


@dataclass
class _Session:
    pos: list
    neg: list
    box: Box | None
    clicks: list


class ClickHistory:
    """Turns CVAT's prompts back into the ordered click sequence the core expects.

    CVAT resends all positive and all negative points of an interaction with every click, in
    two separate lists, so the order of positive vs. negative clicks is lost. Per frame we
    remember the last request; when a new one extends it (the old lists are prefixes of the
    new ones, same box), the new points are appended to the old order. The core's
    ``predict_history`` then finds the previous prediction under that prefix and runs one
    pass with it as the previous mask. Anything else (a point removed or moved, another
    object) starts afresh: positives first, then negatives.
    """

    def __init__(self, maxsize: int = 16) -> None:
        self._maxsize = maxsize
        self._items: collections.OrderedDict[str, _Session] = collections.OrderedDict()
        self._lock = threading.Lock()

    def order(self, key: str, pos: list, neg: list, box: Box | None) -> list[Click]:
        with self._lock:
            s = self._items.get(key)
            if s is not None and s.box == box and pos[: len(s.pos)] == s.pos and neg[: len(s.neg)] == s.neg:
                clicks = s.clicks + [(x, y, True) for x, y in pos[len(s.pos):]]
                clicks += [(x, y, False) for x, y in neg[len(s.neg):]]
            else:
                clicks = [(x, y, True) for x, y in pos] + [(x, y, False) for x, y in neg]
            self._items[key] = _Session(list(pos), list(neg), box, clicks)
            self._items.move_to_end(key)
            while len(self._items) > self._maxsize:
                self._items.popitem(last=False)
        return list(clicks)


def interact(model, frame: Frame, pos: list, neg: list, box: Box | None, history: ClickHistory | None = None,
             granularity: str = "whole"):
    """Run the core on one interactor request (validated prompts); returns its Prediction.

    ``granularity``: what a single click selects, ``"whole"`` (the object) or ``"part"``.
    """
    require_prompt(pos, box)
    clicks = [(x, y, True) for x, y in pos] + [(x, y, False) for x, y in neg]
    validate_prompt(clicks, box, frame.height, frame.width, max_clicks=MAX_POINTS, require_positive=True)
    if history is not None:
        clicks = history.order(frame.key, pos, neg, box)
    else:
        clicks = [(x, y, True) for x, y in pos] + [(x, y, False) for x, y in neg]
    return model.predict_history(frame.image, clicks, box=box, cache_key=frame.key, granularity=granularity)


# ------------------------------------------------------------------------------------------
# Responses
# ------------------------------------------------------------------------------------------


def mask_bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive ``(x1, y1, x2, y2)`` of a bool mask as ints, or None if it is empty."""
    box = mask_box(mask)
    return None if box is None else tuple(int(v) for v in box)


def polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer polygons of a mask (holes filled) as flat ``[x, y, x, y, ...]`` lists, largest first."""
    return [[float(v) for xy in poly for v in xy] for poly in formats.mask_to_polygons(mask)]


def confidence(score: float) -> str:
    """The predicted IoU as CVAT shows confidences: a string in [0, 1]."""
    return f"{float(np.clip(score, 0.0, 1.0)):.4f}"


def interactor_response(mask: np.ndarray, score: float) -> dict:
    """The nuclio interactor response for one predicted mask (see module docstring)."""
    mask = np.asarray(mask, dtype=bool)
    bounds = mask_bounds(mask)
    if bounds is None:  # nothing found: CVAT shows no shape
        return {"mask": [[0]], "bounds": [0, 0, 0, 0], "points": [], "score": round(float(score), 4), "shapes": []}
    x1, y1, x2, y2 = bounds
    polys = polygons(mask)
    return {
        "mask": mask[y1 : y2 + 1, x1 : x2 + 1].astype(np.uint8).tolist(),
        "bounds": [x1, y1, x2, y2],
        "points": [[x, y] for x, y in zip(polys[0][0::2], polys[0][1::2])] if polys else [],
        "score": round(float(score), 4),
        "shapes": [
            {
                "type": "mask",
                "points": formats.mask_to_cvat_rle(mask),
                "attributes": [{"spec_id": 0, "value": confidence(score)}],  # 0 = confidence
            }
        ],
    }


def detector_response(predictions, label: str) -> list[dict]:
    """The nuclio detector response: one mask shape (with its largest polygon) per object."""
    out = []
    for pred in predictions:
        mask = np.asarray(pred.mask, dtype=bool)
        if not mask.any():
            continue
        polys = polygons(mask)
        out.append(
            {
                "confidence": confidence(pred.score),
                "label": label,
                "type": "mask",
                "mask": formats.mask_to_cvat_serverless_mask(mask),
                "points": polys[0] if polys else [],
            }
        )
    return out


def body_dict(body: Any) -> dict:
    """A nuclio event body as a dict (nuclio decodes JSON only for application/json)."""
    import json

    if isinstance(body, dict):
        return body
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body).decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            raise InvalidPromptError("the request body is not JSON") from None
        except RecursionError:
            raise InvalidPromptError("the request body is JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidPromptError("the request body must be a JSON object")
    return body
