"""Shared fixtures: data paths (skip cleanly when the data root, sqsam_core.config.data_root, is absent) and a tiny ONNX fixture.

The fixture model is NOT a segmentation model: it is a contract-shaped ONNX graph built with
onnx.helper whose mask logits are positive exactly on the positive-click disks (pooled to the
output stride). It lets plumbing tests check geometry end to end without trained weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sqsam_core.config import data_root

REPO = Path(__file__).resolve().parents[1]
DATA = data_root(REPO)  # $SQSAM_DATA, else ../shared/data beside the repository
BUNDLED_MODEL = REPO / "models" / "weights" / "squeezesam.onnx"


def dataset(name: str) -> Path:
    path = DATA / "eval" / name
    if not (path / "images").is_dir():
        pytest.skip(f"evaluation data not found at {path}")
    return path


#: Fixtures that read the data sets: a test that uses one (directly or through another fixture) is
#: marked ``data``; a module adds its own in ``DATA_FIXTURES``. Tests that read the data through a
#: helper carry ``@pytest.mark.data`` themselves.
DATA_FIXTURES = ("grabcut_dir", "berkeley_dir")


def pytest_collection_modifyitems(config, items):
    for item in items:
        wanted = set(DATA_FIXTURES) | set(getattr(item.module, "DATA_FIXTURES", ()))
        if wanted & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.data)


@pytest.fixture
def grabcut_dir() -> Path:
    return dataset("GrabCut")


@pytest.fixture
def berkeley_dir() -> Path:
    return dataset("Berkeley")


def build_fixture_model(path: Path, size: int = 64, stride: int = 2, num_masks: int = 3, **meta_overrides) -> Path:
    """Write the click-echo ONNX fixture described in the module docstring."""
    import onnx
    from onnx import TensorProto, helper

    from sqsam_core.contract import CONTRACT_VERSION, ModelSpec

    inputs = [
        helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size]),
        helper.make_tensor_value_info("clicks", TensorProto.FLOAT, [1, 2, size, size]),
        helper.make_tensor_value_info("prev_mask", TensorProto.FLOAT, [1, 1, size, size]),
        helper.make_tensor_value_info("box", TensorProto.FLOAT, [1, 1, size, size]),
    ]
    s = size // stride
    outputs = [
        helper.make_tensor_value_info("masks", TensorProto.FLOAT, [1, num_masks, s, s]),
        helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1, num_masks]),
    ]
    consts = [
        helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [1]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [20.0]),
        helper.make_tensor("shift", TensorProto.FLOAT, [], [10.0]),
        helper.make_tensor("iou_value", TensorProto.FLOAT, [1, num_masks], list(np.linspace(0.9, 0.5, num_masks))),
    ]
    nodes = [
        helper.make_node("Slice", ["clicks", "starts", "ends", "axes"], ["positive"]),
        helper.make_node("AveragePool", ["positive"], ["pooled"], kernel_shape=[stride, stride], strides=[stride, stride]),
        helper.make_node("Mul", ["pooled", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "shift"], ["logit"]),
        helper.make_node("Concat", ["logit"] * num_masks, ["masks"], axis=1),
        helper.make_node("Identity", ["iou_value"], ["iou"]),
    ]
    graph = helper.make_graph(nodes, "click_echo_fixture", inputs, outputs, initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    spec = ModelSpec(size, 3.0, num_masks, stride, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                     CONTRACT_VERSION, "fixture-click-echo")
    meta = {**spec.to_metadata(), **meta_overrides}
    for key, value in meta.items():
        if value is None:
            continue
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


@pytest.fixture
def fixture_model_path(tmp_path) -> Path:
    return build_fixture_model(tmp_path / "fixture.onnx")


@pytest.fixture(scope="session")
def bundled_model():
    """The trained model shipped in the package (skip if this checkout lacks it)."""
    if not BUNDLED_MODEL.is_file():
        pytest.skip("bundled model not present")
    from sqsam_core import SqueezeSAM

    return SqueezeSAM(BUNDLED_MODEL)
