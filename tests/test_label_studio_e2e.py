"""End to end against a real Label Studio (pip ``label-studio``) started here on 127.0.0.1.

The executable comes from ``$SQSAM_LABEL_STUDIO_BIN`` (a file, or a venv folder), else
``<repo>/.venv-label-studio``, then ``label-studio`` on PATH. Label Studio pins many packages, so
it lives in a virtual environment of its own, built from the committed constraints::

    make install-label-studio
    .venv/bin/python -m pytest tests/test_label_studio_e2e.py

Flow, as a person would do it: create a project with a brush config, import a GrabCut image,
connect the sqsam backend (``POST /api/ml``, ``is_interactive: true``), open the task (Label
Studio asks the backend for predictions), then ``POST /api/ml/{id}/interactive-annotating`` with
a keypoint and with an extra negative point; every brush RLE is decoded with label-studio-sdk's
``decode_rle`` and compared with the ground truth. Once with a legacy token, once with a
personal access token (JWT).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flask", reason="the label-studio extra (flask) is not installed")
cv2 = pytest.importorskip("cv2")
brush = pytest.importorskip("label_studio_sdk.converter.brush", reason="label-studio-sdk (dev extra) not installed")

from sqsam_core.geometry import interior_point, mask_iou  # noqa: E402
from sqsam_label_studio.cli import template  # noqa: E402
from sqsam_label_studio.images import ImageLoader  # noqa: E402
from sqsam_label_studio.lsproc import LS_VENV, BackgroundServer, LabelStudioServer, find_label_studio  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: IoU with the ground truth that one click at the object's interior point must reach.
E2E_CLICK_MIN_IOU = 0.8
#: IoU after an extra negative point (on the background the first mask wrongly took, if any).
E2E_NEGATIVE_MIN_IOU = 0.8
#: IoU of the best pre-annotation region with the object (the salient object of a GrabCut image).
E2E_AUTOMASK_MIN_IOU = 0.7
#: The GrabCut image used (one clear object).
IMAGE_NAME = "sheep"

LS_STARTUP_TIMEOUT = 400.0


def _label_studio_bin() -> str | None:
    explicit = os.environ.get("SQSAM_LABEL_STUDIO_BIN")
    if explicit:
        return find_label_studio(explicit)
    return find_label_studio(str(REPO / LS_VENV)) or shutil.which("label-studio")


LS_BIN = _label_studio_bin()
pytestmark = [pytest.mark.e2e, pytest.mark.data, pytest.mark.skipif(
    LS_BIN is None,
    reason=f"label-studio is not installed: `make install-label-studio` builds {LS_VENV} "
           "(or set SQSAM_LABEL_STUDIO_BIN)")]


def decode(region: dict) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    return np.reshape(brush.decode_rle(region["value"]["rle"]), (h, w, 4))[:, :, 3] > 127


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    server = LabelStudioServer(LS_BIN, tmp_path_factory.mktemp("label-studio"),
                               token="sqsam-e2e-legacy-token-0123456789")
    server.start(timeout=LS_STARTUP_TIMEOUT)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def grabcut_object(grabcut_dir_module):
    images = list((grabcut_dir_module / "images").glob(f"{IMAGE_NAME}.*"))
    gt_raw = cv2.imread(str(grabcut_dir_module / "masks" / f"{IMAGE_NAME}.png"), cv2.IMREAD_GRAYSCALE)
    if not images or gt_raw is None:
        pytest.skip(f"GrabCut {IMAGE_NAME} not found in {grabcut_dir_module}")
    return images[0], gt_raw == 255, gt_raw == 128


@pytest.fixture(scope="module")
def grabcut_dir_module():
    from tests.conftest import dataset

    return dataset("GrabCut")


@pytest.fixture(scope="module")
def model():
    from tests.conftest import BUNDLED_MODEL

    if not BUNDLED_MODEL.is_file():
        pytest.skip("bundled model not present")
    from sqsam_core import SqueezeSAM

    return SqueezeSAM(BUNDLED_MODEL)


def keypoint(x: float, y: float, w: int, h: int, positive: bool = True) -> dict:
    """A smart keypoint as Label Studio's frontend serializes it (pixel centre -> percent)."""
    return {"id": f"k{x}_{y}", "type": "keypointlabels", "from_name": "click", "to_name": "image",
            "original_width": w, "original_height": h, "image_rotation": 0, "origin": "manual",
            "value": {"x": 100 * (x + 0.5) / w, "y": 100 * (y + 0.5) / h, "width": 0.5,
                      "keypointlabels": ["Object"], "labels": ["Object"]},
            "is_positive": positive}


def run_flow(ls: LabelStudioServer, client, model, backend_url: str, image_path: Path, gt, ignore,
             title: str) -> dict:
    h, w = gt.shape
    project = client.create_project(title, template("brush"))
    task_ids = client.import_images(project, [image_path])
    assert len(task_ids) == 1
    task_id = task_ids[0]

    # extra_params travel with /setup; min_score 0 keeps every salient region so that the IoU
    # check below, not the model's own score, judges the pre-annotation.
    ml = client.connect_ml(project, backend_url, title="sqsam", interactive=True,
                           extra_params={"min_score": 0.0, "max_objects": 3})
    ml_id = int(ml["id"])
    info = client.ml_backend(ml_id)
    assert info.get("state") == "CO", info  # connected: /health and /setup answered
    assert info.get("is_interactive") is True
    assert info.get("model_version") in (None, "", model.spec.model_version), info

    # Opening the task makes Label Studio ask the backend for pre-annotations.
    started = time.perf_counter()
    opened = client.task(task_id)
    automask_ms = (time.perf_counter() - started) * 1000
    predictions = client.predictions(task_id)
    assert predictions, f"no predictions after opening task {task_id}: {opened}"
    pred = predictions[0]
    assert pred["model_version"] == model.spec.model_version
    regions = [r for r in pred["result"] if r["type"] == "brushlabels"]
    assert regions, pred
    automask_masks = [decode(r) for r in regions]
    assert all(m.shape == gt.shape for m in automask_masks)
    automask_iou = max(mask_iou(m, gt, ignore) for m in automask_masks)

    # Interactive: one positive click at the object's interior point.
    x, y, _ = interior_point(gt)
    started = time.perf_counter()
    answer = client.interactive(ml_id, task_id, {"result": [keypoint(x, y, w, h)]})
    click_ms = (time.perf_counter() - started) * 1000
    assert "errors" not in answer, answer
    result = answer["data"]["result"]
    assert len(result) == 1 and result[0]["type"] == "brushlabels"
    assert result[0]["value"]["brushlabels"] == ["Object"]
    assert answer["data"]["model_version"] == model.spec.model_version
    mask1 = decode(result[0])
    # The chain adds nothing: Label Studio shows exactly what the core predicts.
    from PIL import Image, ImageOps

    with Image.open(image_path) as im:  # decoded as the backend decodes it
        image = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert np.array_equal(mask1, model.predict_history(image, [(x, y, True)]).mask)
    iou1 = mask_iou(mask1, gt, ignore)

    # An extra negative point: on background the first mask took, else deep in the background.
    fp = mask1 & ~gt & ~ignore
    nx, ny, _ = interior_point(fp) if fp.sum() > 25 else interior_point(~gt & ~ignore)
    clicks = [keypoint(x, y, w, h), keypoint(nx, ny, w, h, positive=False)]
    started = time.perf_counter()
    answer = client.interactive(ml_id, task_id, {"result": clicks})
    negative_ms = (time.perf_counter() - started) * 1000
    assert "errors" not in answer, answer
    mask2 = decode(answer["data"]["result"][0]) if answer["data"]["result"] else np.zeros_like(gt)
    assert np.array_equal(mask2, model.predict_history(image, [(x, y, True), (nx, ny, False)]).mask)
    iou2 = mask_iou(mask2, gt, ignore)
    numbers = {"automask_iou": automask_iou, "click_iou": iou1, "negative_iou": iou2,
               "open_task_ms": automask_ms, "click_ms": click_ms, "negative_click_ms": negative_ms}
    print(title, {k: round(v, 3) for k, v in numbers.items()})
    return numbers


def check_quality(numbers: dict) -> None:
    assert numbers["click_iou"] >= E2E_CLICK_MIN_IOU, numbers
    assert numbers["negative_iou"] >= E2E_NEGATIVE_MIN_IOU, numbers
    assert numbers["automask_iou"] >= E2E_AUTOMASK_MIN_IOU, numbers


def test_legacy_token(label_studio, model, grabcut_object):
    image_path, gt, ignore = grabcut_object
    loader = ImageLoader(ls_url=label_studio.url, api_key=label_studio.token)
    from sqsam_label_studio.app import Settings, create_app

    with BackgroundServer(create_app(model=model, loader=loader, settings=Settings())) as backend:
        numbers = run_flow(label_studio, label_studio.client(), model, backend.url, image_path, gt, ignore,
                           "sqsam e2e (legacy token)")
    check_quality(numbers)


def test_personal_access_token(label_studio, model, grabcut_object):
    image_path, gt, ignore = grabcut_object
    pat = label_studio.client().create_personal_token()
    assert pat.count(".") == 2  # a JWT refresh token
    loader = ImageLoader(ls_url=label_studio.url, api_key=pat)
    from sqsam_label_studio.app import Settings, create_app

    with BackgroundServer(create_app(model=model, loader=loader, settings=Settings())) as backend:
        # Drive Label Studio with the same token, exchanged for an access token, as a script would.
        auth = loader._auth(label_studio.url + "/", pat)
        client = label_studio.client(auth.header())
        numbers = run_flow(label_studio, client, model, backend.url, image_path, gt, ignore,
                           "sqsam e2e (personal access token)")
        assert auth.jwt and auth._access  # the backend fetched the image with a Bearer token
    check_quality(numbers)


def test_backend_errors_reach_label_studio_as_errors(label_studio, model, grabcut_object):
    """A broken request (coordinates outside 0-100) comes back from Label Studio as an error, not a crash."""
    image_path, gt, _ = grabcut_object
    loader = ImageLoader(ls_url=label_studio.url, api_key=label_studio.token)
    from sqsam_label_studio.app import Settings, create_app

    client = label_studio.client()
    with BackgroundServer(create_app(model=model, loader=loader, settings=Settings())) as backend:
        project = client.create_project("sqsam e2e (errors)", template("brush"))
        task_id = client.import_images(project, [image_path])[0]
        ml_id = int(client.connect_ml(project, backend.url, interactive=True)["id"])
        bad = keypoint(10, 10, *gt.shape[::-1])
        bad["value"]["x"] = 250.0
        answer = client.interactive(ml_id, task_id, {"result": [bad]})
        assert answer.get("errors") and "422" in answer["errors"][0], answer
