"""``sqsam annotate --format label-studio`` imported into a real Label Studio (127.0.0.1).

Label Studio reads the images through its local-files serving: it runs with
``LOCAL_FILES_SERVING_ENABLED=true`` and ``LOCAL_FILES_DOCUMENT_ROOT`` set to a folder holding
the images, the project gets a Local Files storage on that folder (``POST
/api/storages/localfiles``), and ``sqsam annotate --ls-document-root`` writes task URLs
``/data/local-files/?d=<path relative to the root>``. The tasks JSON is imported as it is
(``POST /api/projects/{id}/import``); the test then reads the predictions back through the API,
decodes them with label-studio-sdk and compares them with the ground truth and with the file,
and fetches every task's image URL from Label Studio.

Skips cleanly when Label Studio is not installed (``SQSAM_LABEL_STUDIO_BIN``, see
tests/test_label_studio_e2e.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("requests")
brush = pytest.importorskip("label_studio_sdk.converter.brush", reason="label-studio-sdk (dev extra) not installed")

from sqsam_core.annotate.bench import ground_truth, read_gt  # noqa: E402
from sqsam_core.cli import main  # noqa: E402
from sqsam_core.geometry import mask_iou  # noqa: E402
from sqsam_label_studio.cli import template  # noqa: E402
from sqsam_label_studio.lsproc import LabelStudioServer, find_label_studio  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NAMES = ["106024.jpg", "sheep.jpg", "flower.jpg"]
LS_STARTUP_TIMEOUT = 400.0


def _label_studio_bin() -> str | None:
    explicit = os.environ.get("SQSAM_LABEL_STUDIO_BIN")
    if explicit:
        return find_label_studio(explicit)
    for venv in (REPO / ".venv-label-studio", REPO / ".lsvenv"):
        found = find_label_studio(str(venv))
        if found:
            return found
    return shutil.which("label-studio")


LS_BIN = _label_studio_bin()
pytestmark = [pytest.mark.e2e, pytest.mark.data,
              pytest.mark.skipif(LS_BIN is None, reason="label-studio is not installed (set SQSAM_LABEL_STUDIO_BIN)")]


def decode(region: dict) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    return np.reshape(brush.decode_rle(region["value"]["rle"]), (h, w, 4))[:, :, 3] > 127


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.conftest import BUNDLED_MODEL, dataset

    if not BUNDLED_MODEL.is_file():
        pytest.skip("bundled model not present")
    pairs = ground_truth(dataset("GrabCut"), NAMES)
    root = tmp_path_factory.mktemp("document-root")
    images = root / "project" / "images"
    images.mkdir(parents=True)
    for image, _ in pairs:
        shutil.copyfile(image, images / image.name)  # Label Studio serves real files below its root
    server = LabelStudioServer(LS_BIN, tmp_path_factory.mktemp("label-studio"),
                               token="sqsam-annotate-e2e-token-0123456789",
                               extra_env={"LOCAL_FILES_SERVING_ENABLED": "true",
                                          "LOCAL_FILES_DOCUMENT_ROOT": str(root)})
    server.start(timeout=LS_STARTUP_TIMEOUT)
    try:
        yield server, root, images, pairs
    finally:
        server.stop()


def _import(server, client, title: str, config: str, images: Path, tasks_file: Path) -> list[dict]:
    """A project with a Local Files storage on ``images``, the tasks file imported; its tasks."""
    project = client.create_project(title, config)
    client._call("POST", "/api/storages/localfiles",
                 json={"project": project, "path": str(images), "title": "images", "use_blob_urls": True})
    tasks = json.loads(tasks_file.read_text())
    client._call("POST", f"/api/projects/{project}/import", json=tasks)
    ids = client.task_ids(project)
    assert len(ids) == len(tasks)
    return [client.task(task_id) for task_id in sorted(ids)]


def test_label_studio_imports_annotate_output_with_predictions(setup, tmp_path, capsys):
    server, root, images, pairs = setup
    client = server.client()

    # auto-masks as brush predictions
    out = tmp_path / "tasks.json"
    code = main(["annotate", str(images), "--format", "label-studio", "--out", str(out), "--workers", "1",
                 "--ls-document-root", str(root), "--max-objects", "2", "--min-score", "0"])
    assert code == 0, capsys.readouterr().err
    written = json.loads(out.read_text())
    assert [t["data"]["image"] for t in written] == [
        f"/data/local-files/?d=project/images/{name}" for name in sorted(NAMES)]
    tasks = _import(server, client, "annotate brush", template("brush"), images, out)
    by_url = {t["data"]["image"]: t for t in written}
    gt_by_name = {image.name: read_gt(mask) for image, mask in pairs}
    for task in tasks:
        url = task["data"]["image"]
        name = url.rsplit("/", 1)[1]
        # Label Studio serves the image the task points at
        served = client.session.get(server.url + url, timeout=60)
        assert served.status_code == 200 and served.content == (images / name).read_bytes()
        predictions = client.predictions(task["id"])
        assert len(predictions) == 1
        regions = predictions[0]["result"]
        expected = by_url[url]["predictions"][0]["result"]
        assert [r["id"] for r in regions] == [r["id"] for r in expected]
        assert regions and all(r["type"] == "brushlabels" and r["value"]["brushlabels"] == ["Object"]
                               for r in regions)
        assert all(np.array_equal(decode(r), decode(e)) for r, e in zip(regions, expected))
        gt, ignore = gt_by_name[name]
        assert max(mask_iou(decode(r), gt, ignore) for r in regions) >= 0.7, name

    # boxes from a Label Studio export -> polygon predictions keeping the rectangle's label
    export = []
    for n, (image, mask) in enumerate(pairs):
        gt, ignore = read_gt(mask)
        h, w = gt.shape
        rows, cols = np.flatnonzero((gt | ignore).any(1)), np.flatnonzero((gt | ignore).any(0))
        value = {"x": 100 * cols[0] / w, "y": 100 * rows[0] / h, "width": 100 * (cols[-1] + 1 - cols[0]) / w,
                 "height": 100 * (rows[-1] + 1 - rows[0]) / h, "rotation": 0, "rectanglelabels": ["Other"]}
        export.append({"id": n + 1, "data": {"image": f"/data/local-files/?d=project/images/{image.name}"},
                       "annotations": [{"result": [{"type": "rectanglelabels", "from_name": "box",
                                                    "to_name": "image", "id": f"b{n}", "value": value}]}]})
    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps(export))
    poly_out = tmp_path / "poly.json"
    code = main(["annotate", str(images), "--boxes", str(export_file), "--polygons", "--format", "label-studio",
                 "--out", str(poly_out), "--workers", "1"])
    assert code == 0, capsys.readouterr().err
    tasks = _import(server, client, "annotate polygons", template("polygon"), images, poly_out)
    for task in tasks:
        (prediction,) = client.predictions(task["id"])
        regions = prediction["result"]
        assert regions and all(r["type"] == "polygonlabels" and r["value"]["polygonlabels"] == ["Other"]
                               and r["from_name"] == "outline" for r in regions)
