"""SqueezeSAM runtime plumbing on the click-echo ONNX fixture (see conftest), plus model-file errors.

The fixture's masks are the positive-click disks, so a click must come back as a disk of radius
R / scale image pixels centred on the click: that checks letterbox, prompt maps, cropping and
resizing end to end, independent of trained weights.
"""

import numpy as np
import pytest
from PIL import Image

from sqsam_core import SqueezeSAM
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
