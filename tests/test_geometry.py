"""The clicks-and-geometry module: letterbox maps, prompt maps, mapping back, the next-click rule."""

import cv2
import numpy as np
import pytest

from sqsam_core import geometry


def test_letterbox_points_round_trip():
    box = geometry.Letterbox(height=480, width=640, size=320)
    assert box.scale == 0.5 and (box.resized_height, box.resized_width) == (240, 320)
    points = np.array([[0, 0], [639, 479], [100.5, 200.25]])
    back = box.points_to_image(box.points_to_model(points))
    np.testing.assert_allclose(back, points, atol=1e-9)
    # pixel centres: the image's last pixel centre maps to the model's last pixel centre
    np.testing.assert_allclose(box.points_to_model([[639, 479]]), [[319.25, 239.25]])


def test_letterbox_image_places_top_left_with_zero_padding():
    image = np.full((100, 50, 3), 200, np.uint8)
    canvas, box = geometry.letterbox_image(image, 64)
    assert canvas.shape == (64, 64, 3) and (box.resized_height, box.resized_width) == (64, 32)
    assert (canvas[:, :32] == 200).all() and (canvas[:, 32:] == 0).all()
    chw = geometry.zero_padding(geometry.normalize_image(canvas, (0.5,) * 3, (0.25,) * 3), box)
    assert chw.shape == (3, 64, 64)
    np.testing.assert_allclose(chw[:, :, :32], (200 / 255 - 0.5) / 0.25, rtol=1e-6)
    assert (chw[:, :, 32:] == 0).all()


def test_click_maps_draw_disks_in_the_right_channel():
    maps = geometry.click_maps([(10, 20, True), (40, 5, False)], size=64, radius=3)
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert maps[0, 20, 10] == 1 and maps[1, 5, 40] == 1
    assert maps[0, 5, 40] == 0 and maps[1, 20, 10] == 0
    assert maps[0].sum() == pytest.approx(np.pi * 9, rel=0.25)
    assert maps[0, 20, 14] == 0  # outside the radius
    assert not geometry.click_maps([], 16, 3).any()


def test_box_map_is_inclusive_and_clipped():
    m = geometry.box_map((2, 3, 5, 4), 8)
    assert m[0].sum() == 4 * 2 and m[0, 3, 2] == 1 and m[0, 4, 5] == 1
    assert not geometry.box_map(None, 8).any()
    assert geometry.box_map((-10, -10, 100, 100), 8).all()


def test_logits_to_image_recovers_an_image_space_square():
    height, width, size, stride = 300, 200, 256, 2
    box = geometry.Letterbox(height, width, size)
    truth = np.zeros((height, width), bool)
    truth[50:150, 40:120] = True
    # render the square into the model's output grid (cell centres), then map back
    s = size // stride
    centres = (np.arange(s) + 0.5) * stride - 0.5
    img_x = box.points_to_image(np.stack([centres, np.zeros(s)], 1))[:, 0]
    img_y = box.points_to_image(np.stack([np.zeros(s), centres], 1))[:, 1]
    inside = ((img_y[:, None] >= 50) & (img_y[:, None] < 150) & (img_x[None] >= 40) & (img_x[None] < 120))
    logits = np.where(inside, 5.0, -5.0).astype(np.float32)
    back = geometry.logits_to_image(logits, box, stride) > 0
    assert back.shape == (height, width)
    assert geometry.mask_iou(back, truth) > 0.95
    ys, xs = np.nonzero(back)  # no systematic shift: centroid within half an output cell (1.17 px)
    assert abs(ys.mean() - 99.5) < 1.2 and abs(xs.mean() - 79.5) < 1.2


def test_probability_to_model_is_zero_on_padding():
    box = geometry.Letterbox(40, 80, 32)
    out = geometry.probability_to_model(np.ones((40, 80)), box)
    assert out.shape == (1, 32, 32) and out[0, :16].min() == 1 and out[0, 16:].max() == 0


def test_interior_point_is_the_centre_of_a_rectangle():
    region = np.zeros((50, 60), bool)
    region[10:31, 20:51] = True  # 21 rows x 31 cols: centre row 20, col 35
    x, y, depth = geometry.interior_point(region)
    assert y == 20 and abs(x - 35) <= 10 and depth == pytest.approx(11, abs=0.5)
    assert geometry.interior_point(np.zeros((4, 4), bool)) is None


def test_next_click_follows_the_ritm_rule():
    gt = np.zeros((60, 60), bool)
    gt[10:50, 10:50] = True
    x, y, positive = geometry.next_click(np.zeros_like(gt), gt)
    assert positive and 25 <= x <= 34 and 25 <= y <= 34
    too_big = np.ones_like(gt)
    x, y, positive = geometry.next_click(too_big, gt)
    assert not positive and not gt[y, x]
    assert geometry.next_click(gt.copy(), gt) is None


def test_next_click_respects_the_ignore_band():
    gt = np.zeros((40, 40), bool)
    gt[10:30, 10:30] = True
    ignore = np.zeros_like(gt)
    ignore[10:30, 10:30] = True  # every error pixel ignored
    assert geometry.next_click(np.zeros_like(gt), gt, ignore) is None


def test_mask_iou_and_box():
    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    b = np.zeros_like(a)
    b[4:8, 4:8] = True
    assert geometry.mask_iou(a, b) == pytest.approx(4 / 28)
    assert geometry.mask_iou(a, a) == 1 and geometry.mask_iou(~a & a, ~a & a) == 1
    assert geometry.mask_box(a) == (2, 2, 5, 5) and geometry.mask_box(a & ~a) is None


def test_zoom_window_grows_the_object_box_and_clips_to_the_image():
    mask = np.zeros((400, 600), bool)
    mask[100:200, 300:400] = True  # 100 x 100 object, centre (350, 150) in edge coordinates
    assert geometry.zoom_window(mask, [], expansion=1.4, min_side=50) == (280, 80, 420, 220)
    # min_side wins over a small object; a negative click does not widen the window
    assert geometry.zoom_window(mask, [(10, 10, False)], expansion=1.4, min_side=200) == (250, 50, 450, 250)
    # a positive click widens it; the window is clipped at the image border
    left, top, right, bottom = geometry.zoom_window(mask, [(590, 150, True)], expansion=1.4, min_side=50)
    assert right == 600 and left < 300 and (top, bottom) == (80, 220)
    assert geometry.zoom_window(np.zeros((10, 10), bool), [(3, 3, False)]) is None
    assert geometry.zoom_window(np.zeros((50, 50), bool), [], box=(10, 10, 19, 19), min_side=1) == (8, 8, 22, 22)


def test_view_maps_points_into_its_window_and_masks_outside_it():
    view = geometry.View(300, 500, 64, left=100, top=50, right=300, bottom=150)  # 200 x 100 window
    assert not view.is_full and geometry.full_view(300, 500, 64).is_full
    assert view.letterbox.scale == pytest.approx(64 / 200)
    # the window's top-left pixel centre maps where the letterbox puts its top-left pixel centre
    np.testing.assert_allclose(view.points_to_model([[100, 50]]), view.letterbox.points_to_model([[0, 0]]))
    assert view.contains(100, 50) and view.contains(299, 149) and not view.contains(300, 100)
    logits = np.full((32, 32), 5.0, np.float32)  # positive over the whole model output
    image_logits = view.logits_to_image(logits, stride=2)
    assert image_logits.shape == (300, 500)
    assert (image_logits[50:150, 100:300] > 0).all() and (image_logits[:50] < 0).all() and (image_logits[:, 300:] < 0).all()
    with pytest.raises(ValueError):
        geometry.View(300, 500, 64, left=400, top=0, right=600, bottom=10)


def test_letterbox_window_cuts_the_window_from_a_downscaled_source():
    image = np.zeros((400, 800, 3), np.uint8)
    image[100:200, 400:600] = 255  # the window's content is all white
    view = geometry.View(400, 800, 64, left=400, top=100, right=600, bottom=200)
    for source, scale in ((image, 1.0), (image[::2, ::2], 0.5)):
        canvas = geometry.letterbox_window(source, scale, view)
        box = view.letterbox
        assert canvas.shape == (64, 64, 3)
        assert canvas[: box.resized_height, : box.resized_width].min() == 255
        assert canvas[box.resized_height :].max() == 0


def test_logits_to_view_agrees_with_the_image_space_route():
    """Warping output logits between views equals going through image space (up to resampling)."""
    rng = np.random.default_rng(0)
    small = cv2.GaussianBlur(rng.normal(0, 4, (32, 32)).astype(np.float32), (0, 0), 3)
    full = geometry.full_view(300, 500, 64)
    window = geometry.View(300, 500, 64, left=120, top=40, right=380, bottom=260)
    for source, target in ((full, window), (window, full), (window, window)):
        warped = geometry.logits_to_view(small, source, target, stride=2)
        via_image = target.crop(source.logits_to_image(small, stride=2))
        expected = geometry.probability_to_model((via_image > 0).astype(np.float32), target.letterbox)[0] > 0.5
        agree = (warped > 0) == expected
        box = target.letterbox
        assert agree[: box.resized_height, : box.resized_width].mean() > 0.97
        assert (warped[box.resized_height :] < 0).all() and (warped[:, box.resized_width :] < 0).all()
