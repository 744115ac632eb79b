"""``sqsam annotate``: inputs, box files, each output format read back by its own decoder,
bad input, kill and resume, local processes and a Dask LocalCluster (identical outputs).

Data-driven cases use four GrabCut images (linked into a temporary folder) and their
ground-truth boxes; masks are compared with the ground truth (128 band ignored).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sqsam_core.annotate.bench import box_iou, ground_truth, read_gt, write_gt_boxes
from sqsam_core.annotate.inputs import BoxPrompt, InputError, box_to_pixels, collect_images, read_box_file
from sqsam_core.cli import main
from sqsam_core.formats import coco_rle_to_mask
from sqsam_core.geometry import mask_iou

REPO = Path(__file__).resolve().parents[1]
NAMES = ["106024.jpg", "124080.jpg", "153077.jpg", "153093.jpg"]
#: The least mean IoU of box-to-mask with ground-truth boxes that the product promises.
BOX_MIN_MEAN_IOU = 0.85


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


#: the ground-truth pairs come from the data sets: tests using them are marked `data` (conftest)
DATA_FIXTURES = ("pairs",)


@pytest.fixture(scope="module")
def pairs():
    from tests.conftest import BUNDLED_MODEL, dataset

    if not BUNDLED_MODEL.is_file():
        pytest.skip("bundled model not present")
    found = ground_truth(dataset("GrabCut"), NAMES)
    assert [p.name for p, _ in found] == NAMES
    return found


@pytest.fixture(scope="module")
def images(pairs, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for image, _ in pairs:
        (folder / image.name).symlink_to(image.resolve())
    return folder


@pytest.fixture(scope="module")
def gt_boxes(pairs, tmp_path_factory) -> Path:
    return write_gt_boxes(pairs, tmp_path_factory.mktemp("boxes") / "gt_boxes.json", with_band=True)


def run(*args, capsys=None) -> tuple[int, str]:
    code = main(["annotate", *map(str, args)])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


# --------------------------------------------------------------------------------------------
# Inputs and box geometry (no model)
# --------------------------------------------------------------------------------------------


def test_collect_images_folders_globs_files(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    for name in ("a/x.jpg", "a/sub/y.PNG", "a/notes.txt", "z.bmp"):
        (tmp_path / name).write_bytes(b"not decoded here")
    found = collect_images([str(tmp_path / "a"), str(tmp_path / "*.bmp"), str(tmp_path / "a" / "x.jpg")])
    assert [key for key, _ in found] == ["sub/y.PNG", "x.jpg", "z.bmp"]  # x.jpg given twice: once
    with pytest.raises(InputError, match="no such file or folder"):
        collect_images([str(tmp_path / "missing")])
    with pytest.raises(InputError, match="no file matches"):
        collect_images([str(tmp_path / "*.gif")])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="both be named 'x.jpg'"):
        collect_images([str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg")])


def test_box_to_pixels_coco_label_studio_rotation_and_bad_boxes():
    # COCO [x, y, w, h]: columns x .. x + w - 1 (inclusive pixel box), x = column
    assert box_to_pixels(BoxPrompt((10, 20, 30, 40), "px", "b"), 100, 100) == (10, 20, 39, 59)
    # Label Studio percent of a 200 x 100 image
    assert box_to_pixels(BoxPrompt((10, 20, 50, 30), "%", "b"), 200, 100) == (20, 20, 119, 49)
    # clipped to the image
    assert box_to_pixels(BoxPrompt((-5, -5, 20, 20), "px", "b"), 10, 10) == (0, 0, 9, 9)
    # rotated 90 degrees about the top-left corner: the box swings to the left of x
    x0, y0, x1, y1 = box_to_pixels(BoxPrompt((50, 10, 20, 10), "px", "b", rotation=90), 100, 100)
    assert (round(x0), round(y0), round(x1), round(y1)) == (40, 10, 49, 29)
    for coords, match in [((1, 2, 0, 5), "zero or negative size"), ((float("nan"), 0, 5, 5), "non-finite"),
                          ((200, 200, 5, 5), "outside"), (("a", 0, 5, 5), "four numbers"),
                          ((1, 2, 3, None), "four numbers")]:
        with pytest.raises(ValueError, match=match):
            box_to_pixels(BoxPrompt(coords, "px", "b"), 100, 100)


def test_read_label_studio_export_matches_uploads_and_local_files(tmp_path):
    (tmp_path / "imgs" / "s").mkdir(parents=True)
    for name in ("imgs/cat.jpg", "imgs/s/dog.png"):
        (tmp_path / name).write_bytes(b"x")
    rect = {"type": "rectanglelabels", "from_name": "box", "to_name": "image", "id": "r1",
            "value": {"x": 10, "y": 10, "width": 50, "height": 50, "rotation": 0, "rectanglelabels": ["Cat"]}}
    export = [
        {"id": 7, "data": {"image": "/data/upload/3/0a1b2c3d-cat.jpg"}, "annotations": [{"result": [rect]}]},
        {"id": 8, "data": {"image": "/data/local-files/?d=imgs/s/dog.png"},
         "annotations": [{"result": [rect], "was_cancelled": True}], "predictions": [{"result": [rect]}]},
        {"id": 9, "data": {"image": "https://example.org/x/missing.jpg"}, "annotations": []},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    parsed = read_box_file(path, [str(tmp_path / "imgs")])
    assert parsed.kind == "label-studio"
    first, second, third = parsed.jobs
    assert (first.key, first.error, first.boxes[0].keep["labels"]) == ("cat.jpg", None, ["Cat"])
    assert (second.key, len(second.boxes)) == ("s/dog.png", 1)  # cancelled annotation -> the prediction
    assert "not among INPUT" in third.error and third.boxes == []
    bad = tmp_path / "bad.json"
    for text, match in [("{", "not valid JSON"), ('{"x": 1}', "neither a COCO"),
                        ('{"images": [{"id": 1}], "annotations": []}', "file_name")]:
        bad.write_text(text)
        with pytest.raises(InputError, match=match):
            read_box_file(bad, [str(tmp_path / "imgs")])


# --------------------------------------------------------------------------------------------
# Output formats, against ground truth and the formats' own decoders
# --------------------------------------------------------------------------------------------


def test_coco_boxes_to_masks_meets_iou_bar_and_loads_in_pycocotools(images, gt_boxes, pairs, tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "out.json"
    code, err = run(images, "--boxes", gt_boxes, "--format", "coco", "--out", out, "--workers", "1",
                    capsys=capsys)
    assert code == 0, err
    assert not (tmp_path / "out.json.parts").exists()  # shards removed after a complete run
    ious = box_iou(out, pairs)
    assert np.mean(ious) >= BOX_MIN_MEAN_IOU, ious
    data = json.loads(out.read_text())
    source = json.loads(gt_boxes.read_text())
    # ids, categories and image entries kept from the box file
    assert [a["id"] for a in data["annotations"]] == [a["id"] for a in source["annotations"]]
    assert [a["image_id"] for a in data["annotations"]] == [a["image_id"] for a in source["annotations"]]
    assert data["categories"] == source["categories"]
    assert [(i["id"], i["file_name"]) for i in data["images"]] == [(i["id"], i["file_name"]) for i in source["images"]]
    for ann in data["annotations"]:
        mask = coco_rle_to_mask(ann["segmentation"])
        assert ann["area"] == int(mask.sum())
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert ann["bbox"] == [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
        assert 0.0 <= ann["score"] <= 1.0
    # loads as a COCO data set, and evaluates as detections against the ground truth
    coco_out = COCO(str(out))
    assert len(coco_out.getAnnIds()) == len(NAMES)
    gt = COCO(str(gt_boxes))
    dt = gt.loadRes(data["annotations"])
    evaluator = COCOeval(gt, dt, "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[1] >= 0.9  # AP at IoU 0.5: every mask overlaps its object well


def test_coco_polygons_and_automask(images, pairs, tmp_path, capsys):
    import cv2
    from pycocotools.coco import COCO

    out = tmp_path / "auto.json"
    code, err = run(images, "--out", out, "--polygons", "--workers", "1", "--max-objects", "3", capsys=capsys)
    assert code == 0, err
    coco = COCO(str(out))
    data = json.loads(out.read_text())
    assert [i["file_name"] for i in data["images"]] == NAMES and [i["id"] for i in data["images"]] == [1, 2, 3, 4]
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    best = []
    for image_id, (_, mask_path) in enumerate(pairs, start=1):
        gt, ignore = read_gt(mask_path)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert 1 <= len(anns) <= 3
        assert all(isinstance(a["segmentation"], list) for a in anns)  # polygons
        filled = []
        for ann in anns:
            canvas = np.zeros(gt.shape, np.uint8)
            for flat in ann["segmentation"]:
                cv2.fillPoly(canvas, [np.round(np.array(flat).reshape(-1, 2)).astype(np.int32)], 1)
            filled.append(canvas.astype(bool))
            # pycocotools rasterises the same polygons (its own decoder) to nearly the same pixels
            assert mask_iou(coco.annToMask(ann).astype(bool), filled[-1]) >= 0.9
        best.append(max(mask_iou(m, gt, ignore) for m in filled))
    assert np.mean(best) >= 0.7, best  # the salient object of a GrabCut image is among the auto-masks


def test_png_format_matches_coco_masks(images, gt_boxes, tmp_path, capsys):
    coco_out, png_out = tmp_path / "c.json", tmp_path / "png"
    assert run(images, "--boxes", gt_boxes, "--out", coco_out, "--workers", "1", capsys=capsys)[0] == 0
    code, err = run(images, "--boxes", gt_boxes, "--format", "png", "--out", png_out, "--workers", "1",
                    capsys=capsys)
    assert code == 0, err
    index = json.loads((png_out / "index.json").read_text())
    coco = json.loads(coco_out.read_text())
    assert [im["file"] for im in index["images"]] == NAMES
    objects = [o for im in index["images"] for o in im["objects"]]
    assert len(objects) == len(coco["annotations"])
    for obj, ann in zip(objects, coco["annotations"]):
        with Image.open(png_out / obj["mask"]) as im:
            mask = np.asarray(im.convert("L")) > 127
        assert np.array_equal(mask, coco_rle_to_mask(ann["segmentation"]))
        assert (obj["id"], obj["category_id"], obj["area"], obj["bbox"]) == (
            ann["id"], ann["category_id"], ann["area"], ann["bbox"])
    assert not (png_out / ".parts").exists()


def test_label_studio_format_from_label_studio_boxes(images, pairs, tmp_path, capsys):
    brush = pytest.importorskip("label_studio_sdk.converter.brush", reason="label-studio-sdk (dev extra)")
    tasks, labels = [], ["Cat", "Dog", "Cat", "Dog"]
    for n, ((image, mask_path), label) in enumerate(zip(pairs, labels)):
        gt, ignore = read_gt(mask_path)
        h, w = gt.shape
        rows, cols = np.flatnonzero((gt | ignore).any(1)), np.flatnonzero((gt | ignore).any(0))
        value = {"x": 100 * cols[0] / w, "y": 100 * rows[0] / h, "width": 100 * (cols[-1] + 1 - cols[0]) / w,
                 "height": 100 * (rows[-1] + 1 - rows[0]) / h, "rotation": 0, "rectanglelabels": [label]}
        tasks.append({"id": 100 + n, "data": {"image": f"/data/upload/1/0123abcd-{image.name}"},
                      "annotations": [{"result": [{"type": "rectanglelabels", "from_name": "box",
                                                   "to_name": "img", "id": f"r{n}", "value": value}]}]})
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    out = tmp_path / "ls.json"
    code, err = run(images, "--boxes", export, "--format", "label-studio", "--out", out, "--workers", "1",
                    capsys=capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert [t["data"] for t in result] == [t["data"] for t in tasks]  # tasks keep their data (image URL)
    for task, (_, mask_path), label in zip(result, pairs, labels):
        gt, ignore = read_gt(mask_path)
        (prediction,) = task["predictions"]
        (region,) = prediction["result"]
        assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == [label]
        assert (region["from_name"], region["to_name"]) == ("mask", "img")
        h, w = region["original_height"], region["original_width"]
        mask = np.reshape(brush.decode_rle(region["value"]["rle"]), (h, w, 4))[:, :, 3] > 127
        assert mask_iou(mask, gt, ignore) >= 0.8
    # polygons: PolygonLabels in percent, the same labels
    out_poly = tmp_path / "ls_poly.json"
    assert run(images, "--boxes", export, "--format", "label-studio", "--polygons", "--out", out_poly,
               "--workers", "1", capsys=capsys)[0] == 0
    poly = json.loads(out_poly.read_text())
    regions = [r for t in poly for r in t["predictions"][0]["result"]]
    assert regions and all(r["type"] == "polygonlabels" and r["from_name"] == "outline" for r in regions)
    assert all(0 <= x <= 100 and 0 <= y <= 100 for r in regions for x, y in r["value"]["points"])
    assert {r["value"]["polygonlabels"][0] for r in regions} == {"Cat", "Dog"}


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_corrupt_image_and_invalid_box_fail_alone_with_exit_code_1(images, gt_boxes, tmp_path, capsys):
    folder = tmp_path / "with_bad"
    folder.mkdir()
    for image in images.iterdir():
        (folder / image.name).symlink_to(image.resolve())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    out = tmp_path / "out.json"
    code, err = run(folder, "--out", out, "--workers", "1", capsys=capsys)
    assert code == 1
    failed = [line for line in err.splitlines() if line.startswith("  ")]
    assert len(failed) == 1 and failed[0].startswith("  broken.jpg: ") and "Traceback" not in err
    data = json.loads(out.read_text())
    assert [i["file_name"] for i in data["images"]] == NAMES  # the others are written
    assert (tmp_path / "out.json.parts").is_dir()  # kept so that --resume redoes only the failed image

    boxes = json.loads(gt_boxes.read_text())
    boxes["annotations"].append({"id": 999, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10]})
    boxes["annotations"].append({"id": 998, "image_id": 2, "category_id": 1, "bbox": ["x", 5, 10, 10]})
    bad_boxes = tmp_path / "bad_boxes.json"
    bad_boxes.write_text(json.dumps(boxes))
    out2 = tmp_path / "out2.json"
    code, err = run(images, "--boxes", bad_boxes, "--out", out2, "--workers", "1", capsys=capsys)
    assert code == 1
    failed = sorted(line.strip() for line in err.splitlines() if line.startswith("  "))
    assert len(failed) == 2
    assert failed[0].startswith("106024.jpg box 999: bbox has zero or negative size")
    assert failed[1].startswith("124080.jpg box 998: bbox must be four numbers")
    assert len(json.loads(out2.read_text())["annotations"]) == len(NAMES)


def test_usage_errors_are_one_line_exit_2(images, gt_boxes, tmp_path, capsys, monkeypatch):
    def check(*args, match):
        code, err = run(*args, capsys=capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("sqsam: error: "), err
        assert match in lines[0], err

    out = tmp_path / "o.json"
    check(tmp_path / "nope", "--out", out, match="no such file or folder")
    check(images, "--out", tmp_path / "missing" / "o.json", match="does not exist")
    check(images, "--out", out, "--boxes", tmp_path / "nope.json", match="no such file")
    check(images, "--out", out, "--format", "xml", match="invalid choice")
    check(images, "--out", out, "--workers", "0", match="positive integer")
    check(images, "--out", out, "--dask", "somewhere", match="tcp://HOST:8786")
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the dask extra were not installed
    check(images, "--out", out, "--dask", "local", match='pip install "sqsam[dask]"')
    monkeypatch.delitem(sys.modules, "distributed")
    # an unfinished run's parts folder is never silently overwritten
    (tmp_path / "o.json.parts").mkdir()
    (tmp_path / "o.json.parts" / "manifest.json").write_text('{"fingerprint": "other"}')
    check(images, "--out", out, match="--resume")
    check(images, "--out", out, "--resume", match="other inputs")


def test_progress_lines_when_not_a_terminal(images, tmp_path, capsys):
    code, err = run(images, "--out", tmp_path / "o.json", "--workers", "1", "--progress-every", "0",
                    "--max-objects", "1", capsys=capsys)
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("annotate: ")]
    assert lines[0].startswith("annotate: 1/4 images (25%)") and "images/s, ETA" in lines[0]
    assert lines[-1].startswith("annotate: 4/4 images (100%)")


# --------------------------------------------------------------------------------------------
# Kill and resume; local processes and Dask give the same bytes
# --------------------------------------------------------------------------------------------


def _sqsam(*args) -> list[str]:
    return [sys.executable, "-m", "sqsam_core", "annotate", *map(str, args)]


def test_killed_run_resumes_to_the_same_bytes(images, gt_boxes, tmp_path):
    reference = tmp_path / "reference.json"
    done = subprocess.run(_sqsam(images, "--boxes", gt_boxes, "--out", reference, "--workers", "2"),
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr

    out = tmp_path / "killed.json"
    shard = tmp_path / "killed.json.parts" / "shard-0000.jsonl"
    process = subprocess.Popen(_sqsam(images, "--boxes", gt_boxes, "--out", out, "--workers", "1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if shard.is_file() and shard.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the group we started: the run and its workers
        process.wait(30)
    kept = shard.read_bytes().count(b"\n")
    assert 2 <= kept < len(NAMES) and not out.exists()

    resumed = subprocess.run(_sqsam(images, "--boxes", gt_boxes, "--out", out, "--workers", "2", "--resume"),
                             capture_output=True, text=True, timeout=300, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({len(NAMES) - kept} annotated" in resumed.stderr  # the finished images were not redone
    assert out.read_bytes() == reference.read_bytes()
    assert not (tmp_path / "killed.json.parts").exists()


def test_dask_local_cluster_gives_identical_output(images, gt_boxes, tmp_path, capsys):
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    outputs = {}
    for name, extra in [("inline", ["--workers", "1"]), ("dask", ["--dask", "local", "--workers", "2"])]:
        for fmt in ("coco", "label-studio"):
            out = tmp_path / f"{name}-{fmt}.json"
            code, err = run(images, "--boxes", gt_boxes, "--format", fmt, "--out", out, *extra, capsys=capsys)
            assert code == 0, err
            outputs[name, fmt] = out.read_bytes()
    assert outputs["inline", "coco"] == outputs["dask", "coco"]
    assert outputs["inline", "label-studio"] == outputs["dask", "label-studio"]


def test_compose_profiles_for_dask_and_replicas():
    yaml = pytest.importorskip("yaml", reason="pyyaml (dev extra) not installed")
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    scheduler, worker, client = services["dask-scheduler"], services["dask-worker"], services["annotate"]
    assert all(s["profiles"] == ["dask"] for s in (scheduler, worker, client))
    assert "dask" in scheduler["build"]["args"]["SQSAM_EXTRAS"].split(",")
    assert scheduler["command"][:2] == ["dask", "scheduler"]
    assert worker["command"][:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
    assert worker["command"][worker["command"].index("--nthreads") + 1] == "1"
    # workers and the client see the images at the same path
    assert worker["volumes"] == client["volumes"][:1] == ["${SQSAM_IMAGES:-./images}:/images:ro"]
    assert client["entrypoint"] == ["sqsam", "annotate"]
    replica, lb = services["sqsam-replica"], services["sqsam-lb"]
    assert replica["profiles"] == lb["profiles"] == ["replicas"]
    assert replica["environment"] == services["sqsam"]["environment"]
    mount = "./deploy/nginx-replicas.conf:/etc/nginx/conf.d/default.conf:ro"
    assert mount in lb["volumes"]  # a file, not inline `configs: content` (Compose v1 cannot read that)
    assert "server sqsam-replica:9090;" in (REPO / "deploy" / "nginx-replicas.conf").read_text()
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.count("ARG SQSAM_EXTRAS=label-studio") == 2  # both stages; the default image is the backend
    pins = (REPO / "requirements" / "docker.txt").read_text()
    assert "\ndask==" in pins and "\ndistributed==" in pins
