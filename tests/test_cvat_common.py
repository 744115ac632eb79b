"""CVAT adapter, shared part (``sqsam_cvat.common``): prompt parsing, frame decoding, click order,
response layouts. Also the helpers the other ``test_cvat_*`` modules use.

Plumbing runs on the click-echo ONNX fixture (tests/conftest.py: masks are the positive-click
disks); accuracy on a GrabCut image needs the bundled model and skips without it.
"""

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sqsam_core.errors import InvalidImageError, InvalidPromptError
from tests.conftest import BUNDLED_MODEL, REPO, dataset

CVAT_DIR = REPO / "integrations" / "cvat"
try:  # installed via the sqsam_cvat package-dir mapping, else straight from the tree
    import sqsam_cvat  # noqa: F401
except ImportError:
    sys.path.insert(0, str(CVAT_DIR))

from sqsam_cvat import common  # noqa: E402

# Product bars for masks vs. ground truth on GrabCut (not fitted to the model: squeezesam-v1 reaches
# 0.94 after one click and 0.95 after three on the sheep, 0.94 salient).
IOU_ONE_CLICK = 0.80  # one click at the object's interior point
IOU_THREE_CLICKS = 0.85  # after three RITM-style clicks
IOU_SALIENT = 0.70  # best detector object vs. the salient GrabCut object

SAMPLE = "sheep"  # 600x450, one clear object (teddy is ambiguous at one click: body vs. body + ears)


# ------------------------------------------------------------------------------------------
# helpers for the test_cvat_* modules
# ------------------------------------------------------------------------------------------


def grabcut_sample(stem: str = SAMPLE):
    """(file bytes, RGB array, object mask, ignore mask) of one GrabCut image; skips if absent."""
    root = dataset("GrabCut")
    path = next((root / "images").glob(f"{stem}.*"))
    raw = path.read_bytes()
    rgb = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    gt = np.asarray(Image.open(root / "masks" / f"{stem}.png"))
    return raw, rgb, gt == 255, gt == 128


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def huge_jpeg_bytes(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny JPEG whose header claims ``width x height`` (a decompression bomb, cheap to make)."""
    raw = bytearray(jpeg_bytes(np.zeros((8, 8, 3), np.uint8)))
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    raw[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(raw)


def interior_click(gt: np.ndarray) -> tuple[int, int]:
    from sqsam_core.geometry import interior_point

    x, y, _ = interior_point(gt)
    return int(x), int(y)


def iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    from sqsam_core.geometry import mask_iou

    return mask_iou(pred, gt, ignore)


def need_bundled_model() -> Path:
    """The trained model: the bundled one, or $SQSAM_CVAT_TEST_MODEL (e.g. a checkpoint export)."""
    override = os.environ.get("SQSAM_CVAT_TEST_MODEL")
    if override:
        return Path(override)
    if not BUNDLED_MODEL.is_file():
        pytest.skip("bundled model not present (models/weights/squeezesam.onnx)")
    return BUNDLED_MODEL


def frame_of(width: int, height: int) -> common.Frame:
    return common.Frame(np.zeros((height, width, 3), np.uint8), f"test:{width}x{height}")


# ------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------


def test_points_are_validated_with_messages_naming_the_field():
    frame = frame_of(100, 50)
    assert common.parse_points([[0, 0], [100, 50], [12.5, 7]], "pos_points", frame) == [(0, 0), (100, 50), (12.5, 7)]
    assert common.parse_points(None, "neg_points", frame) == []
    cases = [
        ([[101, 3]], "pos_points[0] (101, 3) is outside the 100x50 frame"),
        ([[3, -1]], "outside"),
        ([[1, 2, 3]], "[x, y] pair"),
        ([["1", 2]], "must be a number"),
        ([[True, 2]], "must be a number"),
        ([[float("nan"), 2]], "finite"),
        ("12,3", "list of [x, y] points"),
        ([[1, 1]] * (common.MAX_POINTS + 1), "at most"),
    ]
    for value, message in cases:
        with pytest.raises(InvalidPromptError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            common.parse_points(value, "pos_points", frame)


def test_box_accepts_cvat_pairs_and_flat_lists_and_rejects_empty_boxes():
    frame = frame_of(100, 50)
    assert common.parse_box(None, frame) is None and common.parse_box([], frame) is None
    assert common.parse_box([[80, 40], [10, 5]], frame) == (10, 5, 80, 40)
    assert common.parse_box([10, 5, 80, 40], frame) == (10, 5, 80, 40)
    with pytest.raises(InvalidPromptError, match="encloses no area"):
        common.parse_box([[10, 5], [10.5, 40]], frame)
    with pytest.raises(InvalidPromptError, match="outside"):
        common.parse_box([[10, 5], [120, 40]], frame)
    with pytest.raises(InvalidPromptError, match=r"\[\[x1, y1\], \[x2, y2\]\]"):
        common.parse_box([[10, 5]], frame)


def test_threshold_and_missing_prompt():
    assert common.parse_threshold(None) is None and common.parse_threshold("0.25") == 0.25
    assert common.parse_threshold(1) == 1.0
    for bad in ("high", 1.5, -0.1, [0.5]):
        with pytest.raises(InvalidPromptError, match="threshold"):
            common.parse_threshold(bad)
    with pytest.raises(InvalidPromptError, match="no positive points"):
        common.require_prompt([], None)
    common.require_prompt([], (0, 0, 5, 5))  # a box alone is a prompt


def test_frames_decode_once_and_bad_frames_are_clear_errors():
    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    cache = common.FrameCache(maxsize=2)
    frame = cache.decode(b64(png.getvalue()))
    assert (frame.width, frame.height) == (40, 30) and np.array_equal(frame.image, rgb)
    assert cache.decode(b64(png.getvalue())) is frame  # cached by the payload's hash
    assert common.decode_frame("data:image/png;base64," + b64(png.getvalue())).key == frame.key
    cases = [
        ("not base64 at all!", "not valid base64"),
        ("", "non-empty base64"),
        (None, "non-empty base64"),
        (b64(b"GIF89a garbage that is no image"), "'image'"),
        (b64(huge_jpeg_bytes()), "MP limit|too large"),
        (b64(jpeg_bytes(rgb)[:200]), "'image'"),  # truncated
    ]
    for payload, message in cases:
        with pytest.raises(InvalidImageError, match=message):
            cache.decode(payload)


def test_click_history_rebuilds_the_order_of_mixed_clicks():
    h = common.ClickHistory()
    assert h.order("f", [(1, 1)], [], None) == [(1, 1, True)]
    assert h.order("f", [(1, 1)], [(2, 2)], None) == [(1, 1, True), (2, 2, False)]
    # a positive point after the negative one keeps its place in time
    assert h.order("f", [(1, 1), (3, 3)], [(2, 2)], None) == [(1, 1, True), (2, 2, False), (3, 3, True)]
    assert h.order("f", [(1, 1), (3, 3)], [(2, 2)], None)[-1] == (3, 3, True)  # same request again
    # a point removed: start afresh, positives first
    assert h.order("f", [(3, 3)], [(2, 2)], None) == [(3, 3, True), (2, 2, False)]
    # another frame, another box: independent
    assert h.order("g", [(5, 5)], [], (0, 0, 9, 9)) == [(5, 5, True)]
    assert h.order("g", [(5, 5)], [(6, 6)], None) == [(5, 5, True), (6, 6, False)]


def test_responses_follow_cvat_layouts():
    from cvat_sdk.masks import decode_mask

    mask = np.zeros((40, 60), bool)
    mask[10:20, 30:45] = True
    mask[12:14, 33:36] = False  # a hole
    r = common.interactor_response(mask, 0.87)
    x1, y1, x2, y2 = r["bounds"]
    assert (x1, y1, x2, y2) == (30, 10, 44, 19)
    crop = np.array(r["mask"], dtype=bool)
    assert crop.shape == (y2 - y1 + 1, x2 - x1 + 1) and np.array_equal(crop, mask[y1 : y2 + 1, x1 : x2 + 1])
    assert set(np.unique(r["mask"]).tolist()) == {0, 1}
    assert len(r["points"]) >= 4 and all(len(p) == 2 for p in r["points"])
    (shape,) = r["shapes"]
    assert shape["type"] == "mask" and shape["attributes"] == [{"spec_id": 0, "value": "0.8700"}]
    assert np.array_equal(decode_mask(shape["points"], image_width=60, image_height=40), mask)
    empty = common.interactor_response(np.zeros((40, 60), bool), 0.1)
    assert empty["shapes"] == [] and empty["points"] == []

    class P:  # what the detector response reads of a Prediction
        def __init__(self, m, s):
            self.mask, self.score = m, s

    (det,) = common.detector_response([P(mask, 1.2), P(np.zeros_like(mask), 0.9)], "object")
    assert det["label"] == "object" and det["type"] == "mask" and det["confidence"] == "1.0000"
    *bits, bx1, by1, bx2, by2 = det["mask"]
    assert (bx1, by1, bx2, by2) == (30, 10, 44, 19) and set(bits) == {0, 1}
    restored = np.zeros_like(mask)
    restored[by1 : by2 + 1, bx1 : bx2 + 1] = np.array(bits, bool).reshape(by2 - by1 + 1, bx2 - bx1 + 1)
    assert np.array_equal(restored, mask)
    assert len(det["points"]) >= 8 and len(det["points"]) % 2 == 0


def test_body_dict_accepts_what_nuclio_hands_over():
    assert common.body_dict({"a": 1}) == {"a": 1}
    assert common.body_dict(b'{"a": 1}') == {"a": 1}
    assert common.body_dict('{"a": 1}') == {"a": 1}
    for bad in (b"\x00\x01", "[1, 2]", None):
        with pytest.raises(InvalidPromptError, match="JSON"):
            common.body_dict(bad)
