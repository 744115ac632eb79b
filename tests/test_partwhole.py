"""Part and whole: the part/whole evaluation, and what granularity does through the public API."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sqsam_core import SqueezeSAM, partwhole
from sqsam_core.errors import InvalidPromptError
from tests.conftest import BUNDLED_MODEL, dataset


def write_part_set(root, size: int = 96) -> None:
    """One image with a two-part object (label 1 top, label 2 bottom) and a part under 2 %."""
    labels = np.zeros((size, size), np.uint8)
    labels[10:40, 20:70] = 1
    labels[40:80, 20:70] = 2
    labels[79, 20] = 3
    for sub in ("images", "labels", "masks"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.stack([labels * 80] * 3, axis=-1)).save(root / "images" / "a.png")
    Image.fromarray(labels).save(root / "labels" / "a.png")
    Image.fromarray(((labels > 0) * 255).astype(np.uint8)).save(root / "masks" / "a.png")


def test_part_masks_split_a_label_map_into_whole_and_parts():
    labels = np.array([[0, 1, 1, 2], [0, 1, 2, 2], [3, 0, 0, 0]], np.uint8)
    whole, parts = partwhole.part_masks(labels, min_share=0.2)
    assert whole.sum() == 7
    assert [int(p.sum()) for p in parts] == [3, 3]  # label 3 is 1/7 < 0.2 of the object


def test_part_clicks_come_from_labelled_folders(tmp_path):
    write_part_set(tmp_path)
    assert partwhole.has_parts(tmp_path) and not partwhole.has_parts(tmp_path / "images")
    (stem, image, whole, parts), = list(partwhole.iter_part_clicks(tmp_path))
    assert stem == "a" and image.shape == (96, 96, 3) and whole.sum() == 30 * 50 + 40 * 50
    assert [int(p.sum()) for p in parts] == [1500, 1999]  # the 1-px label 3 is no part


@pytest.fixture(scope="module")
def model():
    if not BUNDLED_MODEL.is_file():
        pytest.skip("bundled model not present")
    return SqueezeSAM(BUNDLED_MODEL)


def test_granularity_is_checked(model):
    image = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(InvalidPromptError, match="granularity"):
        model.predict(image, [(5, 5, True)], granularity="sleeve")
    with pytest.raises(InvalidPromptError, match="granularity"):
        model.predict_history(image, [(5, 5, True)], granularity="")


def test_a_part_click_on_ccp_selects_the_person_by_default(model):
    report = partwhole.evaluate_parts(model, dataset("CCP"), limit=3)
    assert report["images"] == 3 and report["part_clicks"] >= 9
    # one click on a garment, a bag or skin: the default mask is the whole person
    assert report["whole_iou"] >= 0.85
    assert report["best_of_k_part_iou"] >= report["part_iou"] - 1e-9
    assert all(0 <= row["part_iou"] <= 1 for row in report["per_click"])
