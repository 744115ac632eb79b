"""cvat-sdk functions (integrations/cvat/sqsam_cvat): the detection function loaded as
``cvat-cli --function-module sqsam_cvat.detection -p ...`` loads it and its output validated by
cvat-sdk's own ``_AnnotationMapper`` (what ``task auto-annotate`` and the agent run on every
frame); the interaction function driven by cvat-cli's agent driver as ``run-agent`` drives it.

Plumbing uses the click-echo ONNX fixture; accuracy on a GrabCut image uses the bundled model.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

cvataa = pytest.importorskip("cvat_sdk.auto_annotation")
from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl  # noqa: E402
from cvat_sdk.masks import decode_mask  # noqa: E402

from sqsam_core.errors import InvalidPromptError  # noqa: E402
from tests.conftest import build_fixture_model  # noqa: E402
from tests.test_cvat_common import (  # noqa: E402
    IOU_ONE_CLICK,
    IOU_SALIENT,
    IOU_THREE_CLICKS,
    grabcut_sample,
    interior_click,
    iou,
    need_bundled_model,
)


@pytest.fixture
def fixture_model(tmp_path, monkeypatch):
    path = build_fixture_model(tmp_path / "fixture.onnx")
    monkeypatch.setenv("SQSAM_MODEL", str(path))
    return path


def load_function(module: str, **params):
    """As cvat-cli loads ``--function-module MODULE -p name=type:value ...``."""
    cli = pytest.importorskip("cvat_cli._internal.common")
    return cli.FunctionLoader(module, None, params).load()


def ds_label(name: str, label_id: int, type_: str):
    """A task label as cvat-sdk's mapper reads it (models.Label attributes)."""
    return SimpleNamespace(name=name, id=label_id, type=type_, attributes=[], sublabels=[])


def validate(function, shapes, ds_labels, conv_mask_to_poly: bool, frame_index: int = 7):
    mapper = _AnnotationMapper(logging.getLogger("test"), function.spec.labels, ds_labels,
                               allow_unmatched_labels=False, conv_mask_to_poly=conv_mask_to_poly)
    tags, mapped = mapper.validate_and_remap(shapes, frame_index)
    assert tags == []
    return mapped


def with_fake_salient_object(function, click):
    """The click-echo fixture has no salient object: stand one in (a click's mask)."""
    model = function._model
    model.automask = lambda image, max_objects=5, min_score=0.5, **kw: [model.predict(image, [click])][:max_objects]
    return function


# ------------------------------------------------------------------------------------------
# detection function
# ------------------------------------------------------------------------------------------


def test_detection_function_loads_with_cli_parameters(fixture_model):
    function = load_function("sqsam_cvat.detection", label="car", max_objects=2, min_score=0.3)
    (label,) = function.spec.labels
    assert (label.name, label.id, label.type) == ("car", 0, "mask")
    default = load_function("sqsam_cvat.detection")
    assert default.spec.labels[0].name == "object"
    explicit = load_function("sqsam_cvat.detection", model=str(fixture_model))
    assert explicit.spec.labels[0].name == "object"
    for bad in ({"max_objects": 0}, {"min_score": 1.5}, {"label": " "}):
        with pytest.raises(ValueError):
            load_function("sqsam_cvat.detection", **bad)


def test_detection_output_passes_cvat_sdk_validation(fixture_model):
    image = Image.fromarray(np.random.default_rng(4).integers(0, 255, (150, 200, 3), dtype=np.uint8))
    function = with_fake_salient_object(load_function("sqsam_cvat.detection", label="car"), (150, 60, True))

    context = _DetectionFunctionContextImpl(frame_name="f.jpg", conf_threshold=None, conv_mask_to_poly=False)
    for task_label_type in ("mask", "any"):
        (shape,) = validate(function, function.detect(context, image), [ds_label("car", 42, task_label_type)], False)
        assert shape.type.value == "mask" and shape.label_id == 42 and shape.frame == 7 and shape.source == "auto"
        mask = decode_mask(shape.points, image_width=200, image_height=150)
        assert mask[60, 150] and not mask[140, 10]

    context = _DetectionFunctionContextImpl(frame_name="f.jpg", conf_threshold=0.2, conv_mask_to_poly=True)
    shapes = validate(function, function.detect(context, image), [ds_label("car", 42, "polygon")], True)
    assert shapes and all(s.type.value == "polygon" and len(s.points) >= 6 for s in shapes)
    xs, ys = shapes[0].points[0::2], shapes[0].points[1::2]
    assert min(xs) < 150 < max(xs) and min(ys) < 60 < max(ys)

    # and the mapper refuses what CVAT would refuse: masks when polygons were asked for
    context = _DetectionFunctionContextImpl(frame_name="f.jpg", conf_threshold=None, conv_mask_to_poly=False)
    with pytest.raises(cvataa.BadFunctionError):
        validate(function, function.detect(context, image), [ds_label("car", 42, "any")], True)


@pytest.mark.data
def test_detection_finds_the_salient_object():
    raw, rgb, gt, ignore = grabcut_sample()
    function = load_function("sqsam_cvat.detection", model=str(need_bundled_model()), min_score=0.3)
    context = _DetectionFunctionContextImpl(frame_name="teddy.jpg", conf_threshold=None, conv_mask_to_poly=False)
    shapes = validate(function, function.detect(context, Image.fromarray(rgb)), [ds_label("object", 1, "any")], False)
    assert shapes
    h, w = gt.shape
    assert max(iou(decode_mask(s.points, image_width=w, image_height=h), gt, ignore) for s in shapes) >= IOU_SALIENT


# ------------------------------------------------------------------------------------------
# interaction function, driven by cvat-cli's agent driver
# ------------------------------------------------------------------------------------------


class _InlineExecutor:
    """Stands in for the agent's worker-process executor: runs jobs here, now."""

    def submit(self, fn, *args):
        return fn(*args)

    def result(self, value):
        return value


class Agent:
    """``cvat-cli function run-agent``'s interaction driver around one function object,
    minus the server: frames come from ``self.images`` instead of a task download."""

    def __init__(self, function):
        drv = pytest.importorskip("cvat_cli._internal.agent_driver")
        inter = pytest.importorskip("cvat_cli._internal.agent_driver_interaction")
        drv.set_worker_current_function(function)
        inter.AgentInteractionFunctionDriver.init_worker(None)
        self.driver = inter.AgentInteractionFunctionDriver(None, _InlineExecutor(), function.spec)
        self.images: dict[int, Image.Image] = {}
        self.loads = 0
        self.driver._get_sample_from_ar_params = lambda ar: (ar["frame"], [])
        self.driver._load_image_for_ar = self._load

    def _load(self, frame, ar):
        self.loads += 1
        return self.images[frame]

    def interact(self, frame: int, pos, neg=(), bbox=None):
        ar = {"type": "interact", "task": 1, "frame": frame, "pos_points": [list(p) for p in pos],
              "neg_points": [list(p) for p in neg], "obj_bbox": [list(p) for p in bbox] if bbox else []}
        return self.driver.calculate_result_for_ar(ar, check_in=None)


def decoded(result, width, height):
    (shape,) = result["shapes"]
    assert shape["type"] == "mask"
    (attr,) = shape["attributes"]
    assert attr.spec_id == int(cvataa.InteractionResultAttributes.CONFIDENCE) and 0 <= float(attr.value) <= 1
    return decode_mask(shape["points"], image_width=width, image_height=height)


def test_interaction_spec_registers_as_a_cvat_interactor(fixture_model):
    inter = pytest.importorskip("cvat_cli._internal.agent_driver_interaction")
    function = load_function("sqsam_cvat.interaction")
    fields = inter.AgentInteractionFunctionDriver.get_remote_function_fields(function.spec)
    assert fields == {"min_pos_points": 1, "min_neg_points": 0, "startswith_box_optional": True}
    driver = inter.AgentInteractionFunctionDriver(None, None, function.spec)
    driver.validate_function_compatibility({**fields, "startswith_box": False})


def test_interaction_through_the_agent_driver(fixture_model):
    function = load_function("sqsam_cvat.interaction")
    agent = Agent(function)
    agent.images[3] = Image.fromarray(np.random.default_rng(5).integers(0, 255, (120, 180, 3), dtype=np.uint8))
    mask = decoded(agent.interact(3, [(40, 30)]), 180, 120)
    assert mask[30, 40] and not mask[100, 160]
    mask = decoded(agent.interact(3, [(40, 30), (150, 90)], [(100, 10)], [(5, 5), (175, 115)]), 180, 120)
    assert mask[30, 40] and mask[90, 150] and not mask[10, 100]
    assert agent.loads == 1  # the preprocessed frame came from the agent's cache

    bad = pytest.importorskip("cvat_cli._internal.agent_driver")
    with pytest.raises(bad.BadArError, match="positive"):
        agent.interact(3, [], [(100, 10)])
    with pytest.raises(InvalidPromptError, match="outside"):
        agent.interact(3, [(400, 10)])


@pytest.mark.data
def test_interaction_masks_match_the_object():
    from sqsam_core.geometry import next_click

    raw, rgb, gt, ignore = grabcut_sample()
    h, w = gt.shape
    agent = Agent(load_function("sqsam_cvat.interaction", model=str(need_bundled_model())))
    agent.images[0] = Image.fromarray(rgb)
    pos, neg = [interior_click(gt)], []
    mask = decoded(agent.interact(0, pos), w, h)
    assert iou(mask, gt, ignore) >= IOU_ONE_CLICK
    for _ in range(2):
        click = next_click(mask, gt, ignore)
        if click is None:
            break
        (pos if click[2] else neg).append((click[0], click[1]))
        mask = decoded(agent.interact(0, pos, neg), w, h)
    assert iou(mask, gt, ignore) >= IOU_THREE_CLICKS
