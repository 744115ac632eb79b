"""SqueezeSAM runtime plumbing on the click-echo ONNX fixture (see conftest), plus model-file errors.

The fixture's masks are the positive-click disks, so a click must come back as a disk of radius
R / scale image pixels centred on the click: that checks letterbox, prompt maps, cropping and
resizing end to end, independent of trained weights.
"""

import numpy as np
import pytest
from PIL import Image

from sqsam_core import SqueezeSAM
from sqsam_core.contract import choose_hypothesis
from sqsam_core.errors import InvalidPromptError, ModelFileError
from tests.conftest import build_fixture_model


@pytest.fixture
def model(fixture_model_path):
    return SqueezeSAM(fixture_model_path)


def test_click_comes_back_as_a_disk_at_the_click(model):
    image = np.zeros((300, 500, 3), np.uint8)  # scale 64/500: R=3 model px -> ~23 image px
    pred = model.predict(image, clicks=[(400, 100, True)])
    assert pred.mask.shape == (300, 500) and pred.mask.dtype == bool
    ys, xs = np.nonzero(pred.mask)
    assert abs(xs.mean() - 400) < 6 and abs(ys.mean() - 100) < 6
    radius = 3 / (64 / 500)
    assert pred.mask.sum() == pytest.approx(np.pi * radius**2, rel=0.35)
    assert pred.masks.shape == (3, 300, 500) and pred.scores.shape == (3,)
    assert pred.score == pytest.approx(0.9)  # one click: the best-scored hypothesis
    assert not model.predict(image, clicks=[(400, 100, False)]).mask.any()


def test_multi_click_uses_hypothesis_zero_and_prev_round_trips(model):
    image = np.zeros((64, 64, 3), np.uint8)
    first = model.predict(image, clicks=[(10, 10, True)])
    second = model.predict(image, clicks=[(10, 10, True), (50, 50, True)], prev=first)
    assert second.index == 0 and second.mask[10, 10] and second.mask[50, 50]
    prev_input = second.prev_mask_input()
    assert prev_input.shape == (1, 64, 64) and prev_input[0, 50, 50] > 0.9 and prev_input[0, 30, 30] < 0.1


def test_predict_history_matches_replayed_clicks_and_caches_prefixes(model):
    image = np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8)
    clicks = [(20, 20, True), (60, 40, True), (100, 70, True)]
    replayed = None
    for n in range(1, 4):
        replayed = model.predict(image, clicks[:n], prev=replayed)
    history = model.predict_history(image, clicks)
    np.testing.assert_array_equal(history.mask, replayed.mask)
    calls = []
    original = model.backend
    model.backend = lambda inputs: calls.append(1) or original(inputs)
    model.predict_history(image, clicks + [(5, 70, False)])
    assert len(calls) == 1  # only the new click costs a pass


def test_image_cache_hits_on_the_second_click(model):
    image = np.zeros((50, 50, 3), np.uint8)
    model.predict(image, clicks=[(5, 5, True)])
    model.predict(image, clicks=[(5, 5, True), (9, 9, False)])
    assert model.images.hits >= 1 and len(model.images) == 1
    model.predict(Image.new("L", (40, 30)), clicks=[(1, 1, True)], cache_key="frame-1")
    assert model.images.get("frame-1") is not None


@pytest.mark.parametrize("clicks", [[(float("nan"), 3, True)], [(1e9, 5, True)], [(-1, 5, True)], [(1, 2)], ["ab"]])
def test_bad_clicks_raise_a_clear_error(model, clicks):
    with pytest.raises(InvalidPromptError):
        model.predict(np.zeros((20, 20, 3), np.uint8), clicks=clicks)


def test_bad_box_and_foreign_prev_raise(model):
    image = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(InvalidPromptError):
        model.predict(image, box=(100, 100, 200, 200))
    with pytest.raises(InvalidPromptError):
        model.predict(image, box=(0, 0, float("inf"), 3))
    other = model.predict(np.zeros((30, 20, 3), np.uint8), clicks=[(3, 3, True)])
    with pytest.raises(InvalidPromptError, match="prev belongs"):
        model.predict(image, clicks=[(3, 3, True)], prev=other)
    swapped = model.predict(image, box=(15, 15, 2, 2))
    assert swapped.box == (2.0, 2.0, 15.0, 15.0)


def test_missing_and_corrupt_model_files_name_the_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found: .*nope.onnx"):
        SqueezeSAM(tmp_path / "nope.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx model" * 10)
    with pytest.raises(ModelFileError, match="garbage.onnx"):
        SqueezeSAM(garbage)
    no_meta = build_fixture_model(tmp_path / "nometa.onnx", **{"sqsam.input_size": None})
    with pytest.raises(ModelFileError, match="sqsam.input_size"):
        SqueezeSAM(no_meta)
    future = build_fixture_model(tmp_path / "future.onnx", **{"sqsam.contract_version": "99"})
    with pytest.raises(ModelFileError, match="contract v99"):
        SqueezeSAM(future)


def test_zoom_in_refines_on_a_window_around_the_object(fixture_model_path):
    """From the second click on, the pass sees the zoom-in window: the echoed disks come back at
    the clicks, drawn at the window's finer scale; a negative click outside the window is ignored."""
    from sqsam_core.predictor import ZoomIn

    image = np.zeros((400, 600, 3), np.uint8)
    zoomed = SqueezeSAM(fixture_model_path, zoom_in=ZoomIn(min_side=100))
    first = zoomed.predict(image, clicks=[(300, 200, True)])
    assert first.view.is_full  # the first click always sees the whole image
    clicks = [(300, 200, True), (330, 210, True), (20, 380, False)]
    second = zoomed.predict(image, clicks=clicks, prev=first)
    left, top, right, bottom = second.view.window
    assert not second.view.is_full and left <= 300 and right > 330 and right - left < 600
    assert second.mask.shape == (400, 600) and second.mask[200, 300] and second.mask[210, 330]
    assert not second.mask[:top].any() and not second.mask[:, right:].any()
    # the disk around the second click has the zoomed radius R / scale, not the full-image one
    disk = second.mask.copy()
    disk[:, :318] = False
    radius = 3 / second.view.letterbox.scale
    assert radius < 3 / first.view.letterbox.scale / 1.5
    assert disk.sum() == pytest.approx(np.pi * radius**2, rel=0.4)
    # the same request without zoom-in sees the whole image
    plain = SqueezeSAM(fixture_model_path, zoom_in=None).predict(image, clicks=clicks, prev=first)
    assert plain.view.is_full


def test_prev_mask_moves_between_views(fixture_model_path):
    """A full-image prediction fed back to a zoom-in pass lands where it was, in window pixels."""
    from sqsam_core import geometry

    model = SqueezeSAM(fixture_model_path)
    image = np.zeros((400, 600, 3), np.uint8)
    first = model.predict(image, clicks=[(300, 200, True)])
    view = geometry.View(400, 600, 64, left=250, top=150, right=450, bottom=350)
    prev = first.prev_mask_input(view)[0]
    ys, xs = np.nonzero(prev > 0.5)
    centre = view.points_to_model([[300, 200]])[0]
    assert abs(xs.mean() - centre[0]) < 1.5 and abs(ys.mean() - centre[1]) < 1.5
    np.testing.assert_allclose(first.prev_mask_input(first.view), first.prev_mask_input())


def test_choose_hypothesis_argmax_only_for_a_single_click():
    scores = np.array([0.2, 0.9, 0.5])
    assert choose_hypothesis(scores, num_clicks=1, has_box=False) == 1  # ambiguous: best-scored
    assert choose_hypothesis(scores, num_clicks=1, has_box=False, granularity="part") == 2  # the next best
    assert choose_hypothesis(scores, num_clicks=0, has_box=False) == 0  # no prompt: the salient object
    assert choose_hypothesis(scores, num_clicks=2, has_box=False) == 0
    assert choose_hypothesis(scores, num_clicks=1, has_box=True) == 0


def test_choose_hypothesis_follows_declared_meanings():
    scores = np.array([0.2, 0.9, 0.5])
    meanings = ("whole", "part")
    assert choose_hypothesis(scores, 1, False, "whole", meanings) == 0
    assert choose_hypothesis(scores, 1, False, "part", meanings) == 1
    assert choose_hypothesis(scores, 3, False, "part", meanings) == 0  # later clicks refine hypothesis 0
    with pytest.raises(ValueError, match="granularity"):
        choose_hypothesis(scores, 1, False, "object", meanings)


def test_model_spec_round_trips_hypothesis_meanings():
    from sqsam_core.contract import CONTRACT_VERSION, ModelSpec

    spec = ModelSpec(320, 5.0, 3, 1, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), CONTRACT_VERSION, "t", ("whole", "part"))
    assert ModelSpec.from_metadata(spec.to_metadata()) == spec
    legacy = {k: v for k, v in spec.to_metadata().items() if k != "sqsam.hypotheses"}
    assert ModelSpec.from_metadata(legacy).hypotheses == ()


def test_automask_puts_the_saliency_pass_first_then_clicked_regions_by_score(model):
    """A stub backend: the no-prompt pass sees a 40x40 square (score 0.6); a click pass returns a
    disk around the click (score 0.95) that the saliency pass's own region click reproduces."""
    size, stride = model.spec.input_size, model.spec.stride
    low = size // stride
    yy, xx = np.mgrid[0:low, 0:low]

    def backend(inputs):
        positive = inputs["clicks"][0, 0]
        logits = np.full((1, 3, low, low), -10.0, np.float32)
        if not positive.any():
            logits[0, :, 2:low // 2, 2:low // 2] = 10.0
            return logits, np.array([[0.6, 0.99, 0.99]], np.float32)
        cy, cx = [v.mean() / stride for v in np.nonzero(positive > 0.5)]
        logits[0, :, (yy - cy) ** 2 + (xx - cx) ** 2 <= 4] = 10.0
        return logits, np.array([[0.95, 0.5, 0.5]], np.float32)

    model.backend = backend
    image = np.zeros((size, size, 3), np.uint8)
    found = model.automask(image, max_objects=3)
    assert found[0].clicks == () and found[0].index == 0 and found[0].score == pytest.approx(0.6)
    assert len(found) == 2 and found[1].score == pytest.approx(0.95) and len(found[1].clicks) == 1


def test_zoom_in_pass_is_edge_refined_on_its_window_only(fixture_model_path):
    """Mapping back and edge refinement touch only the zoom-in window, and give the mask that
    refining the whole image-space logits gives (the echoed disk snaps to a nearby edge)."""
    from sqsam_core import edges
    from sqsam_core.predictor import ZoomIn

    image = np.zeros((400, 600, 3), np.uint8)
    image[:, 332:] = 255  # a vertical edge through the second click's disk
    model = SqueezeSAM(fixture_model_path, zoom_in=ZoomIn(min_side=100))
    first = model.predict(image, clicks=[(300, 200, True)])
    second = model.predict(image, clicks=[(300, 200, True), (330, 210, True)], prev=first)
    assert not second.view.is_full
    prepared = model.prepare(image)
    logits = second.view.logits_to_image(second.low_res_logits[second.index], second.stride)
    whole_image = edges.refine_mask(logits, prepared.grey, 1.0, model.edge_refine)
    np.testing.assert_array_equal(second.mask, whole_image)
    assert (second.mask != (logits > 0)).any()  # the refinement did move the boundary
