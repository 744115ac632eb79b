"""The output grid's resolution ceiling (``sqsam_train.ceiling``): a perfect stride-2 output's IoU."""

import json

import numpy as np
import pytest

from sqsam_core import geometry
from sqsam_core.predictor import ZoomIn
from sqsam_train.ceiling import ceiling_iou, ceiling_view, grid_logits, main


def disk(height: int, width: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_grid_logits_average_each_cell():
    box = geometry.Letterbox(8, 8, 8)  # an 8 x 8 window seen at scale 1 on an 8 x 8 input: cells are 2 x 2 pixels
    gt = np.zeros((8, 8), bool)
    gt[0:2, 0:2] = True  # cell (0, 0) full
    gt[2, 2] = True  # cell (1, 1) a quarter full
    logits = grid_logits(gt, box, stride=2)
    assert logits.shape == (4, 4)
    assert logits[0, 0] > 6 and logits[0, 1] < -6
    assert logits[1, 1] == pytest.approx(np.log(0.25 / 0.75), abs=1e-5)


def test_a_large_disk_survives_the_grid_and_a_thin_line_does_not():
    image = np.zeros((480, 640, 3), np.uint8)
    big = disk(480, 640, 320, 240, 150)
    assert ceiling_iou(image, big, None, 320, zoom=None) > 0.98
    line = np.zeros((480, 640), bool)
    line[100:400, 300] = True  # 1 px wide: a 2-image-px cell at scale 0.5 can not hold it
    assert ceiling_iou(image, line, None, 320, zoom=None) < 0.7


def test_zoom_in_lifts_the_ceiling_of_a_small_object():
    image = np.zeros((1200, 1600, 3), np.uint8)
    small = disk(1200, 1600, 400, 300, 12)  # 24 px across in a 1600 px image: 5 model px at S = 320
    view = ceiling_view(small, 320, ZoomIn())
    assert not view.is_full and view.letterbox.scale > 1.0
    whole = ceiling_iou(image, small, None, 320, zoom=None)
    zoomed = ceiling_iou(image, small, None, 320, zoom=ZoomIn())
    assert whole < 0.9 < zoomed


def test_berkeley_ceiling_is_far_above_the_bar(berkeley_dir, capsys):
    main([str(berkeley_dir), "--input-size", "320"])
    report = json.loads(capsys.readouterr().out)
    assert report["objects"] == 100
    assert report["mean_iou"]["zoom"] > 0.98 and report["below_0.90"]["zoom"] == 0


def test_bad_input_size_is_one_line_error():
    with pytest.raises(SystemExit, match="multiple of 2"):
        main(["nowhere", "--input-size", "321"])
