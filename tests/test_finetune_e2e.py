"""The Label Studio backend learns, end to end against a real Label Studio on 127.0.0.1.

Flow, as a team would live it: a project of CamVid-cars road scenes (``project/CamVid-cars/train``)
gets brush annotations through Label Studio's API; Label Studio's own webhook
(``ANNOTATION_CREATED``) tells the backend, which, once enough have arrived, fetches the
project's export and images, fine-tunes in a child process (a fixed, short number of
steps, ``SQSAM_TRAIN_STEPS``) and serves the result to that project only. Then:

* the project's ``/predict`` (Label Studio's interactive-annotating call) reports the new
  ``model_version``, and its masks on tasks nobody annotated are closer to the ground truth than
  the base model's, which another project still gets;
* a backend started again on the same ``MODEL_DIR`` serves the project model;
* a fine-tune killed half-way leaves that model serving and says why in ``/health``;
* an annotation with an empty mask and a task whose image cannot be fetched are skipped and reported.

Skips cleanly without Label Studio (``SQSAM_LABEL_STUDIO_BIN``), PyTorch or the data.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("flask", reason="the label-studio extra (flask) is not installed")
pytest.importorskip("torch", reason="the train extra (torch) is not installed")

from sqsam_core import formats  # noqa: E402
from sqsam_core.geometry import mask_iou, next_click  # noqa: E402
from sqsam_label_studio.cli import template  # noqa: E402
from sqsam_label_studio.images import ImageLoader  # noqa: E402
from sqsam_label_studio.learning import TrainSettings  # noqa: E402
from sqsam_label_studio.lsproc import BackgroundServer  # noqa: E402
from tests.conftest import DATA  # noqa: E402
from tests.test_label_studio_e2e import LS_BIN, decode, keypoint, label_studio  # noqa: E402, F401 (a fixture)

CAMVID = DATA / "project" / "CamVid-cars" / "train"
#: Training steps of the e2e fine-tune (a step count, not minutes, so that the model and the quality
#: check do not depend on the machine's load; about 5 minutes on two free cores).
E2E_STEPS = int(os.environ.get("SQSAM_E2E_TRAIN_STEPS", 200))
#: Its threads: CI's two cores are free while this test runs (the backend's default is 1).
E2E_THREADS = int(os.environ.get("SQSAM_E2E_TRAIN_THREADS", 2))
#: How long the job may take in all before the test gives up, seconds.
E2E_JOB_TIMEOUT = 5 * E2E_STEPS * 3 + 600
#: Most clicks per held-out object (the RITM rule, through Label Studio; stops at 90 % IoU).
E2E_CLICKS = 10
#: The project model must need this many fewer clicks per object (NoC@90 over the held-out tasks).
E2E_MIN_GAIN = 0.2

pytestmark = [
    pytest.mark.e2e, pytest.mark.train, pytest.mark.data,
    pytest.mark.skipif(LS_BIN is None, reason="label-studio is not installed (set SQSAM_LABEL_STUDIO_BIN)"),
    pytest.mark.skipif(not (CAMVID / "images").is_dir(), reason=f"CamVid-cars not found at {CAMVID}"),
]


def camvid_images() -> tuple[list[Path], list[Path]]:
    """(annotated, held out): three frames of every four are annotated (90); the rest, the 3rd, 7th,
    11th ... frame, are held out (30 frames), nobody annotates them."""
    images = sorted((CAMVID / "images").glob("*.jpg"))
    return [p for i, p in enumerate(images) if i % 4 != 2], images[2::4]


def gt_masks(image: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 127 for p in sorted((CAMVID / "masks").glob(f"{image.stem}_*.png"))]


def brush_region(mask: np.ndarray) -> dict:
    h, w = mask.shape
    return {"from_name": "mask", "to_name": "image", "type": "brushlabels", "original_width": w,
            "original_height": h, "image_rotation": 0,
            "value": {"format": "rle", "rle": formats.mask_to_ls_rle(mask), "brushlabels": ["Object"]}}


def tasks_by_image(client, project: int) -> dict[str, int]:
    """Task id per image name (uploads are named ``<8 hex>-<name>``)."""
    out = {}
    for task_id in client.task_ids(project):
        url = client.task(task_id)["data"]["image"]
        out[url.rsplit("/", 1)[-1].split("-", 1)[-1]] = task_id
    return out


def clicks_to_90(client, ml_id: int, task_id: int, gt: np.ndarray) -> tuple[int, float, set[str]]:
    """(clicks until IoU >= 0.9 or E2E_CLICKS, the first click's IoU, model versions seen): clicks
    placed by the RITM rule, each request carrying all clicks so far, through Label Studio."""
    h, w = gt.shape
    pred = np.zeros_like(gt)
    clicks, ious, versions = [], [], set()
    while len(ious) < E2E_CLICKS and not (ious and ious[-1] >= 0.9):
        click = next_click(pred, gt)
        if click is None:
            break
        clicks.append(keypoint(click[0], click[1], w, h, positive=bool(click[2])))
        answer = client.interactive(ml_id, task_id, {"result": clicks})
        assert "errors" not in answer, answer
        versions.add(answer["data"]["model_version"])
        result = answer["data"]["result"]
        pred = decode(result[0]) if result else np.zeros_like(gt)
        ious.append(mask_iou(pred, gt))
    return (len(ious) if ious[-1] >= 0.9 else E2E_CLICKS), ious[0], versions


def held_out_quality(client, ml_id: int, project: int, held: list[Path]) -> tuple[dict, set[str]]:
    """NoC@90 and mIoU@1 over every car of the held-out tasks, as Label Studio's users get them."""
    ids = tasks_by_image(client, project)
    nocs, firsts, versions = [], [], set()
    for image in held:
        for gt in gt_masks(image):
            noc, first, seen = clicks_to_90(client, ml_id, ids[image.name], gt)
            nocs.append(noc)
            firsts.append(first)
            versions |= seen
    return {"NoC@90": float(np.mean(nocs)), "mIoU@1": float(np.mean(firsts)), "objects": len(nocs)}, versions


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_backend_learns_a_project_model_and_serves_it_to_that_project_only(label_studio, bundled_model, tmp_path):  # noqa: F811 (the imported fixture)
    from sqsam_label_studio.app import Settings, create_app

    client = label_studio.client()
    annotated, held = camvid_images()
    model_dir = tmp_path / "models"

    def backend_app():
        loader = ImageLoader(ls_url=label_studio.url, api_key=label_studio.token)
        settings = TrainSettings(model_dir, min_annotations=len(annotated) + 2, threads=E2E_THREADS, steps=E2E_STEPS,
                                 delay=3.0)
        return create_app(model=bundled_model, loader=loader, settings=Settings(preannotate=False),
                          train_settings=settings)

    app = backend_app()
    learner = app.extensions["sqsam"]["learner"]
    with BackgroundServer(app) as backend:
        cars = client.create_project("cars (learns)", template("brush"))
        other = client.create_project("other project", template("brush"))
        client.import_images(cars, annotated + held)
        client.import_images(other, held)
        ml_cars = int(client.connect_ml(cars, backend.url, interactive=True)["id"])
        ml_other = int(client.connect_ml(other, backend.url, interactive=True)["id"])
        client.session.post(f"{client.url}/api/webhooks/", timeout=60, json={
            "project": cars, "url": f"{backend.url}/webhook", "send_payload": True,
            "send_for_all_actions": False, "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"],
            "is_active": True}).raise_for_status()
        # A task whose image cannot be fetched (a private address the fetch policy refuses).
        client.session.post(f"{client.url}/api/projects/{cars}/import", timeout=60,
                            json=[{"data": {"image": "http://127.0.0.1:9/missing.jpg"}}]).raise_for_status()

        base_quality, base_versions = held_out_quality(client, ml_cars, cars, held)
        assert base_versions == {bundled_model.spec.model_version}

        ids = tasks_by_image(client, cars)
        bad_task = ids["missing.jpg"]
        empty_task = ids[held[0].name]  # an annotation whose only region is empty
        for task_id, regions in ([(bad_task, [brush_region(gt_masks(annotated[0])[0])]),
                                  (empty_task, [brush_region(np.zeros((360, 480), bool))])]
                                 + [(ids[p.name], [brush_region(m) for m in gt_masks(p)]) for p in annotated]):
            client.session.post(f"{client.url}/api/tasks/{task_id}/annotations/", timeout=60,
                                json={"result": regions, "was_cancelled": False}).raise_for_status()
        # Label Studio's webhooks counted the annotations; the last one started the fine-tune.
        wait_for(lambda: learner.running(str(cars)) or learner.models.state(str(cars)).get("job"), 60,
                 "the webhook-triggered fine-tune to start")
        assert learner.wait(str(cars), E2E_JOB_TIMEOUT), "the fine-tune did not finish in time"
        health = client.session.get(f"{backend.url}/health", timeout=10).json()
        job = health["training"]["projects"][str(cars)]["last_job"]
        assert job["status"] == "installed", job
        version = f"{bundled_model.spec.model_version}+p{cars}.1"
        assert health["training"]["projects"][str(cars)]["model_version"] == version
        skipped = " | ".join(job["skipped"])
        assert f"task {bad_task}: image not fetched" in skipped and f"task {empty_task}" in skipped, skipped
        assert "empty mask" in skipped

        project_quality, versions = held_out_quality(client, ml_cars, cars, held)
        assert versions == {version}
        other_ids = tasks_by_image(client, other)  # another project: the base model, the base's masks
        gt = gt_masks(held[1])[0]
        x, y, _ = next_click(np.zeros_like(gt), gt)
        answer = client.interactive(ml_other, other_ids[held[1].name], {"result": [keypoint(x, y, 480, 360)]})
        assert answer["data"]["model_version"] == bundled_model.spec.model_version
        from sqsam_core.imageio import load_image

        rgb = load_image(held[1])  # decoded as the backend decodes it
        assert np.array_equal(decode(answer["data"]["result"][0]), bundled_model.predict_history(rgb, [(x, y, True)]).mask)
        print(f"held-out tasks through Label Studio: base {base_quality}, project {project_quality}; "
              f"fine-tune {job['minutes']} min; its own held-out scores {job['held_out']}")
        task_for_restart = ids[held[1].name]

    # A restarted backend on the same MODEL_DIR serves the project model.
    restarted = backend_app()
    learner = restarted.extensions["sqsam"]["learner"]
    with BackgroundServer(restarted) as backend:
        import requests

        task = client.task(task_for_restart)
        gt = gt_masks(held[1])[0]
        x, y, _ = next_click(np.zeros_like(gt), gt)
        payload = {"tasks": [task], "project": f"{cars}.1700000000", "label_config": template("brush"),
                   "params": {"context": {"result": [keypoint(x, y, 480, 360)]}}}
        answer = requests.post(f"{backend.url}/predict", json=payload, timeout=60).json()
        assert answer["model_version"] == version and answer["results"][0]["model_version"] == version
        assert mask_iou(decode(answer["results"][0]["result"][0]), gt) > 0.5

        # A fine-tune killed half-way: the project model keeps serving, /health says why.
        started = requests.post(f"{backend.url}/train", json={"project": cars}, timeout=30).json()
        assert started["status"] == "ok" and "started" in started["message"], started
        pid = wait_for(lambda: learner.job_pid(str(cars)), 120, "the second fine-tune's process")
        os.killpg(pid, signal.SIGKILL)  # the child runs in its own process group
        assert learner.wait(str(cars), 60)
        health = requests.get(f"{backend.url}/health", timeout=10).json()["training"]["projects"][str(cars)]
        assert health["last_job"]["status"] == "failed" and "killed by signal 9" in health["last_job"]["error"]
        assert health["model_version"] == version
        answer = requests.post(f"{backend.url}/predict", json=payload, timeout=60).json()
        assert answer["model_version"] == version

    # Checked last, so that a short fine-tune on a busy machine still exercises everything above.
    assert project_quality["NoC@90"] <= base_quality["NoC@90"] - E2E_MIN_GAIN, (project_quality, base_quality)
