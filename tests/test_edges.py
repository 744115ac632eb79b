import cv2
import numpy as np

from sqsam_core.edges import EdgeRefine, guided_filter, guided_filter_where, refine_mask


def _square_scene(size=96, left=30, right=70):
    """An image with a bright square (columns ``left:right``) and the square's true mask."""
    truth = np.zeros((size, size), bool)
    truth[left:right, left:right] = True
    rgb = np.where(truth[..., None], 200, 40).astype(np.uint8).repeat(3, axis=2)
    return rgb, truth


def _shifted_blurry_logits(truth, shift=1):
    """Logits whose 0-crossing sits ``shift`` px outside the true edge, softly (as upsampling leaves it)."""
    grown = cv2.dilate(truth.astype(np.uint8), np.ones((2 * shift + 1, 2 * shift + 1), np.uint8))
    soft = cv2.GaussianBlur(grown.astype(np.float32), (0, 0), 1.5)
    return (soft - 0.5) * 4.0


def grey(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_refined_boundary_moves_onto_the_image_edge():
    rgb, truth = _square_scene()
    logits = _shifted_blurry_logits(truth)
    plain = logits > 0
    refined = refine_mask(logits, grey(rgb), 1.0)
    assert iou(plain, truth) < 0.92
    assert iou(refined, truth) > 0.99


def test_confident_pixels_never_change():
    rgb, truth = _square_scene()
    logits = np.where(truth, 6.0, -6.0).astype(np.float32)
    logits[0:10, 0:10] = 6.0  # a confident blob on flat background stays, though no edge supports it
    out = refine_mask(logits, grey(rgb), 1.0, EdgeRefine(unsure=0.2))
    np.testing.assert_array_equal(out, logits > 0)


def test_downscaled_source_gives_the_same_snap():
    rgb, truth = _square_scene(size=192, left=60, right=140)
    logits = _shifted_blurry_logits(truth, shift=2)
    half = cv2.resize(rgb, (96, 96), interpolation=cv2.INTER_AREA)
    refined = refine_mask(logits, grey(half), 0.5)
    assert refined.shape == truth.shape
    assert iou(refined, truth) > iou(logits > 0, truth) + 0.02


def test_guided_filter_keeps_a_constant_and_follows_the_guide():
    guide = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    np.testing.assert_allclose(guided_filter(guide, np.full_like(guide, 0.3), 2, 1e-3), 0.3, atol=1e-5)
    np.testing.assert_allclose(guided_filter(guide, guide, 2, 1e-6), guide, atol=1e-3)


def test_filtering_only_the_tiles_of_a_thin_band_equals_the_whole_array_filter():
    rng = np.random.default_rng(0)
    guide = rng.random((150, 230), dtype=np.float32)
    src = rng.random((150, 230), dtype=np.float32)
    where = np.zeros((150, 230), bool)
    where[0, :] = where[:, 229] = True  # on the border: the clipped margins must reflect like the whole array
    where[70:73, 20:200] = True  # a band across tile edges
    whole = guided_filter(guide, src, 2, 1e-3)
    tiled = guided_filter_where(guide, src, where, 2, 1e-3, tile=32)
    np.testing.assert_allclose(tiled[where], whole[where], atol=1e-6)
    np.testing.assert_array_equal(tiled[100:, :200], src[100:, :200])  # no band there: left as it was
