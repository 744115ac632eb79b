"""Mask encodings (sqsam_core.formats) against the reference SDKs: label-studio-sdk, cvat-sdk, pycocotools.

SDK-backed tests skip cleanly when the SDK is not installed (they live in the ``dev`` extra).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sqsam_core import formats as F
from sqsam_core.errors import InvalidPromptError
from sqsam_core.geometry import mask_iou

# pycocotools' compiled decoder trips a numpy 2 DeprecationWarning (not ours; results are exact).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def synthetic_masks() -> dict[str, np.ndarray]:
    """Named (H, W) bool masks covering the edge cases of every run-length layout."""
    rng = np.random.default_rng(0)
    masks = {
        "empty": np.zeros((23, 31), bool),
        "full": np.ones((23, 31), bool),
        "single_pixel_image_on": np.ones((1, 1), bool),
        "single_pixel_image_off": np.zeros((1, 1), bool),
        "noise_odd": rng.random((37, 53)) < 0.5,
        "sparse_noise": rng.random((29, 17)) < 0.05,
        "column": np.zeros((41, 1), bool),
        "row": np.zeros((1, 57), bool),
    }
    masks["column"][5:30] = True
    masks["row"][0, ::3] = True
    corner = np.zeros((19, 27), bool)
    corner[:7, :9] = True  # the tight box starts inside the mask
    masks["top_left_corner"] = corner
    last = np.zeros((19, 27), bool)
    last[-1, -1] = True
    masks["last_pixel"] = last
    # Runs longer than 256 and 65536 values (x4 for RGBA) exercise every length field.
    long_runs = np.zeros((300, 701), bool)
    long_runs[120:, :] = True
    long_runs[200:210, 100:400] = False
    masks["long_runs"] = long_runs
    ring = np.zeros((64, 80), bool)
    cv2.circle(ring.view(np.uint8), (40, 32), 25, 1, -1)
    cv2.circle(ring.view(np.uint8), (40, 32), 10, 0, -1)
    masks["ring"] = ring
    return masks


SYNTHETIC = synthetic_masks()


@pytest.fixture
def grabcut_masks(grabcut_dir: Path) -> list[np.ndarray]:
    """A few real object masks (255 = object; the 128 ignore band counts as background)."""
    folder = grabcut_dir / "masks"
    files = sorted(folder.glob("*.png"))[:3] if folder.is_dir() else []
    if not files:
        pytest.skip(f"GrabCut masks not found in {folder}")
    return [np.asarray(Image.open(path).convert("L")) == 255 for path in files]


# --------------------------------------------------------------------------------------------
# Label Studio brush RLE
# --------------------------------------------------------------------------------------------


def sdk_brush():
    return pytest.importorskip("label_studio_sdk.converter.brush")


def check_ls_against_sdk(brush, mask: np.ndarray) -> None:
    ours = F.mask_to_ls_rle(mask)
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in ours)
    assert ours == brush.mask2rle(mask.astype(np.uint8) * 255), "differs from label-studio-sdk's encoder"
    rgba = brush.decode_rle(ours).reshape(*mask.shape, 4)
    assert np.array_equal(rgba[:, :, 3], mask.astype(np.uint8) * 255)
    assert np.array_equal(rgba, np.repeat(rgba[:, :, 3:], 4, axis=2)), "all RGBA channels must be equal"
    assert np.array_equal(F.ls_rle_to_mask(ours, *mask.shape), mask)


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_ls_rle_matches_sdk(name):
    check_ls_against_sdk(sdk_brush(), SYNTHETIC[name])


def test_ls_rle_matches_sdk_on_real_masks(grabcut_masks):
    brush = sdk_brush()
    for mask in grabcut_masks:
        check_ls_against_sdk(brush, mask)


def test_ls_rle_round_trip_without_sdk():
    for mask in SYNTHETIC.values():
        rle = F.mask_to_ls_rle(mask)
        assert np.array_equal(F.ls_rle_to_mask(rle, *mask.shape), mask)
        assert np.array_equal(F.ls_rle_to_mask(bytes(rle), *mask.shape), mask)


def test_ls_rle_round_trips_12_megapixels():
    # speed is measured by `sqsam bench`, never asserted here
    mask = np.zeros((3000, 4000), bool)
    cv2.ellipse(mask.view(np.uint8), (2000, 1500), (1500, 1000), 15, 0, 360, 1, -1)
    rle = F.mask_to_ls_rle(mask)
    assert np.array_equal(F.ls_rle_to_mask(rle, 3000, 4000), mask)


def test_ls_decoder_reads_literal_runs_and_antialiased_alpha():
    brush = sdk_brush()
    rng = np.random.default_rng(1)
    # A legacy-frontend-like RGBA buffer: colored RGB, varying alpha -> literal (non-repeat) runs.
    rgba = rng.integers(0, 256, size=(9, 11, 4)).astype(np.uint8)
    rgba[:4, :, :] = 0
    rle = brush.encode_rle(rgba.ravel())
    assert np.array_equal(F.decode_ls_rle(rle), rgba.ravel())
    assert np.array_equal(F.ls_rle_to_mask(rle, 9, 11), rgba[:, :, 3] >= 128)
    assert np.array_equal(F.ls_rle_to_mask(rle, 9, 11, threshold=1), rgba[:, :, 3] >= 1)


def test_ls_decoder_rejects_bad_input():
    rle = F.mask_to_ls_rle(SYNTHETIC["noise_odd"])
    with pytest.raises(InvalidPromptError, match="expected"):
        F.ls_rle_to_mask(rle, 37, 52)
    with pytest.raises(InvalidPromptError, match="truncated"):
        F.ls_rle_to_mask(rle[: len(rle) // 2], 37, 53)
    with pytest.raises(InvalidPromptError, match="0..255"):
        F.ls_rle_to_mask([300] * 10, 1, 1)
    with pytest.raises(InvalidPromptError):
        F.ls_rle_to_mask("not an rle", 1, 1)
    with pytest.raises(InvalidPromptError, match="positive"):
        F.ls_rle_to_mask(rle, 0, 53)


def test_swapped_size_decodes_to_the_transposed_layout_not_an_error():
    # H*W*4 is symmetric, so a swapped size cannot be detected; document it with a test.
    mask = SYNTHETIC["noise_odd"]
    decoded = F.ls_rle_to_mask(F.mask_to_ls_rle(mask), 53, 37)
    assert decoded.shape == (53, 37)
    assert np.array_equal(decoded.ravel(), mask.ravel())


# --------------------------------------------------------------------------------------------
# Polygons
# --------------------------------------------------------------------------------------------


def rasterise(polygons, shape) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    if polygons:
        cv2.fillPoly(canvas, [np.round(np.array(p)).astype(np.int32) for p in polygons], 1)
    return canvas.astype(bool)


def test_polygon_of_a_rectangle_is_its_corners():
    mask = np.zeros((50, 60), bool)
    mask[10:20, 5:45] = True
    assert F.mask_to_polygons(mask) == [[(5.0, 10.0), (5.0, 19.0), (44.0, 19.0), (44.0, 10.0)]]
    assert np.array_equal(rasterise(F.mask_to_polygons(mask), mask.shape), mask)


def test_polygons_fill_holes_and_drop_small_parts():
    mask = SYNTHETIC["ring"].copy()
    mask[2:4, 2:4] = True  # 4-pixel speck
    polygons = F.mask_to_polygons(mask, min_area=10)
    assert len(polygons) == 1
    filled = np.zeros_like(mask)
    cv2.circle(filled.view(np.uint8), (40, 32), 25, 1, -1)
    assert mask_iou(rasterise(polygons, mask.shape), filled) > 0.95
    assert len(F.mask_to_polygons(mask, min_area=1)) == 2
    assert F.mask_to_polygons(mask, min_area=1)[0] == polygons[0], "largest part first"
    assert F.mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_polygons_of_real_masks(grabcut_masks):
    for mask in grabcut_masks:
        polygons = F.mask_to_polygons(mask)
        assert polygons and all(len(p) >= 3 for p in polygons)
        assert mask_iou(rasterise(polygons, mask.shape), mask) > 0.95
        exact = F.mask_to_polygons(mask, simplify_tolerance=0)
        assert sum(map(len, exact)) >= sum(map(len, polygons))


def test_polygons_percent_are_relative_to_original_size():
    mask = np.zeros((50, 200), bool)
    mask[10:20, 50:150] = True
    pixels = F.mask_to_polygons(mask)
    percent = F.mask_to_polygons_percent(mask)
    assert len(percent) == len(pixels) == 1
    for (x, y), (px, py) in zip(pixels[0], percent[0]):
        assert px == pytest.approx(100 * x / 200) and py == pytest.approx(100 * y / 50)
    assert [25.0, 20.0] in percent[0]
    json.dumps(percent)


# --------------------------------------------------------------------------------------------
# CVAT
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_cvat_rle_matches_cvat_sdk(name):
    cvat_masks = pytest.importorskip("cvat_sdk.masks")
    mask = SYNTHETIC[name]
    ours = F.mask_to_cvat_rle(mask)
    reference = cvat_masks.encode_mask(mask)
    assert ours == reference
    assert [type(v) for v in ours] == [type(v) for v in reference]
    decode = getattr(cvat_masks, "decode_mask", None)  # newer cvat-sdk releases only
    if decode is not None:
        h, w = mask.shape
        assert np.array_equal(decode(ours, image_width=w, image_height=h), mask)


def test_cvat_rle_real_masks(grabcut_masks):
    cvat_masks = pytest.importorskip("cvat_sdk.masks")
    for mask in grabcut_masks:
        ours = F.mask_to_cvat_rle(mask)
        assert ours == cvat_masks.encode_mask(mask)
        assert np.array_equal(F.cvat_rle_to_mask(ours, *mask.shape), mask)


def test_cvat_rle_layout_and_round_trip():
    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:5] = True
    mask[2, 2] = False
    # Box is inclusive: columns 2..4, rows 1..2; crop rows: [1 1 1], [0 1 1] -> runs 0,3,1,2.
    assert F.mask_to_cvat_rle(mask) == [0, 3, 1, 2, 2, 1, 4, 2]
    assert F.mask_to_cvat_rle(np.zeros((4, 4), bool)) == [1, 0, 0, 0, 0]
    for sample in SYNTHETIC.values():
        points = F.mask_to_cvat_rle(sample)
        assert np.array_equal(F.cvat_rle_to_mask(points, *sample.shape), sample)
        assert np.array_equal(F.cvat_rle_to_mask([float(v) for v in points], *sample.shape), sample)


def test_cvat_decoder_rejects_bad_points():
    points = F.mask_to_cvat_rle(SYNTHETIC["top_left_corner"])
    with pytest.raises(InvalidPromptError, match="does not fit"):
        F.cvat_rle_to_mask(points, 5, 5)
    with pytest.raises(InvalidPromptError, match="cover"):
        F.cvat_rle_to_mask([1] + points, 19, 27)
    with pytest.raises(InvalidPromptError, match="integers"):
        F.cvat_rle_to_mask([0.5] + points, 19, 27)
    with pytest.raises(InvalidPromptError):
        F.cvat_rle_to_mask([1, 2], 19, 27)


def test_cvat_serverless_mask_layout():
    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:5] = True
    mask[2, 2] = False
    assert F.mask_to_cvat_serverless_mask(mask) == [1, 1, 1, 0, 1, 1, 2, 1, 4, 2]
    for sample in SYNTHETIC.values():
        values = F.mask_to_cvat_serverless_mask(sample)
        x1, y1, x2, y2 = values[-4:]
        crop = np.array(values[:-4], bool).reshape(y2 - y1 + 1, x2 - x1 + 1)
        assert np.array_equal(crop, sample[y1 : y2 + 1, x1 : x2 + 1])
        assert crop.sum() == sample.sum()


# --------------------------------------------------------------------------------------------
# COCO RLE
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_coco_rle_round_trip(name):
    mask_utils = pytest.importorskip("pycocotools.mask")
    mask = SYNTHETIC[name]
    rle = F.mask_to_coco_rle(mask)
    assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
    json.dumps(rle)
    assert np.array_equal(mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}), mask)
    assert np.array_equal(F.coco_rle_to_mask(rle), mask)
    assert int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})) == mask.sum()


def test_coco_uncompressed_counts_and_errors():
    pytest.importorskip("pycocotools.mask")
    mask = np.zeros((3, 4), bool)
    mask[1, 1:3] = True  # column-major: 4 off, 1 on, 2 off, 1 on, 4 off
    assert np.array_equal(F.coco_rle_to_mask({"size": [3, 4], "counts": [4, 1, 2, 1, 4]}), mask)
    assert np.array_equal(F.coco_rle_to_mask({"size": [3, 4], "counts": F.mask_to_coco_rle(mask)["counts"].encode()}), mask)
    with pytest.raises(InvalidPromptError, match="cover"):
        F.coco_rle_to_mask({"size": [3, 4], "counts": [4, 1]})
    with pytest.raises(InvalidPromptError):
        F.coco_rle_to_mask({"counts": "abc"})
    with pytest.raises(InvalidPromptError):
        F.coco_rle_to_mask({"size": [3, 4], "counts": 7})


# --------------------------------------------------------------------------------------------
# Input validation shared by the encoders
# --------------------------------------------------------------------------------------------


ENCODERS = [F.mask_to_ls_rle, F.mask_to_polygons, F.mask_to_polygons_percent, F.mask_to_cvat_rle,
            F.mask_to_cvat_serverless_mask, F.mask_to_coco_rle]


@pytest.mark.parametrize("encode", ENCODERS, ids=lambda f: f.__name__)
def test_encoders_validate_masks(encode):
    with pytest.raises(ValueError, match="2-D"):
        encode(np.zeros((4, 4, 3), bool))
    with pytest.raises(ValueError, match="dtype"):
        encode(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="empty"):
        encode(np.zeros((0, 4), bool))
    # 0/255 uint8 masks are accepted and mean the same as bool.
    mask = SYNTHETIC["top_left_corner"]
    assert encode(mask.astype(np.uint8) * 255) == encode(mask)
