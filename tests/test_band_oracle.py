"""The boundary-band oracle (``sqsam_train.band_oracle``): a diagnostic over the real click loop."""

import numpy as np
import pytest

pytest.importorskip("torch")

pytestmark = pytest.mark.train

from sqsam_core import SqueezeSAM, geometry  # noqa: E402
from sqsam_core.evaluation import EvalObject, evaluate_object  # noqa: E402
from sqsam_train.band_oracle import band_oracle_mask, evaluate_with_band_oracle  # noqa: E402


def test_the_band_is_the_city_block_ring_around_the_boundary():
    mask = np.zeros((11, 11), bool)
    mask[3:8, 3:8] = True
    gt = np.zeros_like(mask)  # pasting an empty truth shows exactly which pixels the band holds
    out = band_oracle_mask(mask, gt, 1)
    expected = mask.copy()
    expected[3, 3:8] = expected[7, 3:8] = expected[3:8, 3] = expected[3:8, 7] = False  # the inner ring
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(band_oracle_mask(mask, gt, 0), mask)


def _object():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 60, (180, 240, 3), dtype=np.uint8)
    gt = np.zeros((180, 240), bool)
    gt[40:140, 50:190] = True
    gt[60:70, 190:230] = True  # a 10-px arm: the network's edge is not perfect there
    image[gt] = (220, 180, 40)
    return EvalObject("synthetic/arm", image, gt, None)


def test_the_oracle_only_ever_helps_and_a_wide_band_is_the_truth():
    model = SqueezeSAM()
    obj = _object()
    plain = evaluate_object(model, obj, 5, zero_click=False).ious
    narrow = evaluate_with_band_oracle(model, [obj], 1, 5)[0].ious
    wide = evaluate_with_band_oracle(model, [obj], 500, 5)[0].ious
    assert narrow[0] >= plain[0] and narrow[0] > 0.9
    assert wide[0] == pytest.approx(1.0)
    assert geometry.mask_iou(band_oracle_mask(np.zeros_like(obj.gt), obj.gt, 3), obj.gt) == 0.0  # no boundary, no band
