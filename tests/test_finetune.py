"""``sqsam finetune`` and the shared annotation readers (``sqsam_core.datasets``).

Readers: a folder, a COCO JSON (RLE written by pycocotools, polygons) and a Label Studio export
(brush RLE written by label-studio-sdk's own ``mask2rle``, polygons in percent) must give back
the masks they were made from; bad annotations are skipped with a reason. The hold-out split is
deterministic by image name. The fine-tune itself (PyTorch): a resumed run ends with exactly the
weights of an uninterrupted one (on a COCO export laid out as CVAT writes it), with one member and
with two (whose written model is the mean of their weights), and a candidate made worse than the
base is refused (exit 3, nothing written).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from sqsam_core import datasets, formats
from sqsam_core.cli import main as sqsam_main
from tests.conftest import DATA

CAMVID = DATA / "project" / "CamVid-cars" / "train"


def camvid_subset(root: Path, count: int) -> Path:
    """The first ``count`` annotated CamVid-cars train images, copied as a folder project."""
    if not (CAMVID / "images").is_dir():
        pytest.skip(f"CamVid-cars not found at {CAMVID}")
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for image in sorted((CAMVID / "images").glob("*.jpg"))[:count]:
        shutil.copy(image, root / "images" / image.name)
        for mask in (CAMVID / "masks").glob(f"{image.stem}_*.png"):
            shutil.copy(mask, root / "masks" / mask.name)
    return root


def camvid_coco_export(root: Path, count: int) -> Path:
    """The first ``count`` CamVid-cars train images as CVAT's "COCO 1.0" export lays them out:
    ``annotations/instances_default.json`` (masks as RLE, ``iscrowd: 1``) and ``images/``."""
    found = datasets.read_annotations(camvid_subset(root / "folder", count))
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "car"}]}
    (root / "images").mkdir()
    for i, image in enumerate(found.images, start=1):
        shutil.copy(image.source, root / "images" / Path(image.source).name)
        coco["images"].append({"id": i, "file_name": Path(image.source).name, "width": 480, "height": 360})
        for obj in image.objects:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "category_id": 1,
                                        "segmentation": formats.mask_to_coco_rle(obj.mask), "iscrowd": 1,
                                        "area": int(obj.mask.sum())})
    (root / "annotations").mkdir()
    path = root / "annotations" / "instances_default.json"
    path.write_text(json.dumps(coco))
    return path


def synthetic_folder(root: Path) -> dict[str, np.ndarray]:
    """Two images with masks, plus an empty mask and a mask without an image; returns the masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    masks = {}
    for stem in ("a", "b"):
        cv2.imwrite(str(root / "images" / f"{stem}.png"), rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
        for k in range(2):
            mask = np.zeros((40, 60), np.uint8)
            cv2.circle(mask, (15 + 25 * k, 20), 8 + k, 255, -1)
            cv2.imwrite(str(root / "masks" / f"{stem}_{k}.png"), mask)
            masks[f"{stem}_{k}"] = mask > 0
    cv2.imwrite(str(root / "masks" / "a_9.png"), np.zeros((40, 60), np.uint8))  # empty
    cv2.imwrite(str(root / "masks" / "zzz.png"), np.full((40, 60), 255, np.uint8))  # no image
    return masks


def test_folder_reader_groups_masks_by_image_and_reports_what_it_skips(tmp_path):
    masks = synthetic_folder(tmp_path)
    found = datasets.read_annotations(tmp_path)
    assert found.kind == "folder" and [im.name for im in found.images] == ["a", "b"]
    assert found.num_objects == 4
    for image in found.images:
        assert image.load().shape == (40, 60, 3)
        for obj in image.objects:
            assert np.array_equal(obj.mask, masks[obj.name])
    assert any("a_9.png: empty mask" in s for s in found.skipped)
    assert any("zzz.png" in s for s in found.skipped)


def test_coco_reader_decodes_rle_and_polygons_and_skips_bad_annotations(tmp_path):
    masks = synthetic_folder(tmp_path / "folder")
    (tmp_path / "images").mkdir()
    shutil.copy(tmp_path / "folder" / "images" / "a.png", tmp_path / "images" / "a.png")
    polygon = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]  # pixel-edge square: pixels 10..29
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 60, "height": 40},
                   {"id": 2, "file_name": "missing.png", "width": 60, "height": 40}],
        "annotations": [
            {"id": 10, "image_id": 1, "segmentation": formats.mask_to_coco_rle(masks["a_0"]), "iscrowd": 1},
            {"id": 11, "image_id": 1, "segmentation": [polygon], "iscrowd": 0},
            {"id": 12, "image_id": 1, "segmentation": formats.mask_to_coco_rle(np.zeros((40, 60), bool))},
            {"id": 13, "image_id": 2, "segmentation": [polygon]},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "instances_default.json"  # CVAT's COCO 1.0 layout
    path.write_text(json.dumps(coco))
    found = datasets.read_annotations(path)
    assert found.kind == "coco" and len(found.images) == 1
    rle_obj, poly_obj = found.images[0].objects
    assert np.array_equal(rle_obj.mask, masks["a_0"])
    square = np.zeros((40, 60), bool)
    square[10:30, 10:30] = True
    assert (poly_obj.mask ^ square).sum() <= 2 * 20 + 1  # pycocotools rasterises the edge pixels its way
    assert found.images[0].load().shape == (40, 60, 3)
    assert any("annotation 12" in s and "empty" in s for s in found.skipped)
    assert any("missing.png not found" in s for s in found.skipped)


def test_label_studio_export_reader_decodes_the_sdk_brush_rle_and_percent_polygons(tmp_path):
    brush = pytest.importorskip("label_studio_sdk.converter.brush")
    masks = synthetic_folder(tmp_path / "folder")
    image = cv2.cvtColor(cv2.imread(str(tmp_path / "folder" / "images" / "a.png")), cv2.COLOR_BGR2RGB)

    def region(kind, value):
        return {"id": kind[:3], "type": kind, "from_name": "tag", "to_name": "image", "original_width": 60,
                "original_height": 40, "value": value}

    sdk_rle = brush.mask2rle(masks["a_1"].astype(np.uint8) * 255)
    square = [[100 * 10 / 60, 100 * 10 / 40], [100 * 30 / 60, 100 * 10 / 40], [100 * 30 / 60, 100 * 30 / 40],
              [100 * 10 / 60, 100 * 30 / 40]]
    tasks = [
        {"id": 1, "data": {"image": "/data/upload/1/0a1b2c3d-a.png"},
         "annotations": [
             {"id": 1, "was_cancelled": True, "result": [], "updated_at": "2026-01-02"},
             {"id": 2, "result": [region("brushlabels", {"format": "rle", "rle": sdk_rle, "brushlabels": ["Car"]}),
                                  region("polygonlabels", {"points": square, "polygonlabels": ["Car"]}),
                                  region("brushlabels", {"format": "rle", "rle": formats.mask_to_ls_rle(
                                      np.zeros((40, 60), bool)), "brushlabels": ["Car"]})],
              "updated_at": "2026-01-01"}]},
        {"id": 2, "data": {"image": "http://example.invalid/b.png"},
         "annotations": [{"id": 3, "result": [region("brushlabels", {"format": "rle", "rle": sdk_rle})]}]},
        {"id": 3, "data": {"image": "/data/upload/1/c.png"}, "annotations": []},
    ]

    def fetch(url):
        if "example.invalid" in url:
            raise OSError("connection refused")
        return image

    found = datasets.read_label_studio(tasks, fetch=fetch)
    assert [im.name for im in found.images] == ["task1"]
    brush_obj, poly_obj = found.images[0].objects
    assert np.array_equal(brush_obj.mask, masks["a_1"])
    inside, outline = np.zeros((40, 60), bool), np.zeros((40, 60), bool)
    inside[10:30, 10:30] = True  # pixels 10..29: their centres lie inside the outline
    outline[9:31, 9:31] = True
    assert (poly_obj.mask >= inside).all() and (poly_obj.mask <= outline).all()  # pixels on the outline may count
    assert any("task 1" in s and "empty mask" in s for s in found.skipped)
    assert any("task 2: image not fetched: connection refused" in s for s in found.skipped)

    # From a file, images by the URL's name (Label Studio's upload prefix dropped).
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks[:1]))
    from_file = datasets.read_annotations(export, images_dir=tmp_path / "folder" / "images")
    assert from_file.kind == "label-studio" and np.array_equal(from_file.images[0].load(), image)


def test_unreadable_sources_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{not json")
    (tmp_path / "list.json").write_text(json.dumps([{"data": {"image": "a.png"}, "annotations": []}]))
    for source in (tmp_path / "x.json", tmp_path / "list.json", tmp_path / "nothing"):
        with pytest.raises(datasets.DatasetError):
            datasets.read_annotations(source)
    assert sqsam_main(["eval", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sqsam: error:") and "\n" not in err


def test_holdout_split_is_by_image_deterministic_and_order_free():
    images = [datasets.AnnotatedImage(f"img{i:03d}", None) for i in range(50)]
    train, held = datasets.holdout_split(images, 0.2)
    assert len(held) == 10 and len(train) == 40
    assert not {id(i) for i in train} & {id(i) for i in held}
    again_train, again_held = datasets.holdout_split(list(reversed(images)), 0.2)
    assert sorted(i.name for i in again_held) == sorted(i.name for i in held)
    assert [i.name for i in datasets.holdout_split(images[:2], 0.2)[1]] != []  # two images: one held out
    assert datasets.holdout_split(images[:1], 0.2) == (images[:1], [])


def test_eval_reads_a_coco_export(tmp_path, bundled_model):
    coco = camvid_coco_export(tmp_path / "export", 2)
    out = tmp_path / "report.json"
    assert sqsam_main(["eval", str(coco), "--max-clicks", "2", "--no-zero-click", "--no-progress",
                       "--json", str(out)]) == 0
    from_coco = json.loads(out.read_text())
    assert sqsam_main(["eval", str(tmp_path / "export" / "folder"), "--max-clicks", "2", "--no-zero-click",
                       "--no-progress", "--json", str(out)]) == 0
    from_folder = json.loads(out.read_text())
    assert from_coco["objects"] == from_folder["objects"] > 0
    assert from_coco["mIoU@k"] == pytest.approx(from_folder["mIoU@k"], abs=1e-9)  # the same masks, the same clicks


# --------------------------------------------------------------------------------------------
# The fine-tune (PyTorch)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def finetune():
    pytest.importorskip("torch", reason="the train extra (torch) is not installed")
    from sqsam_train import finetune as module

    return module


def test_the_base_weights_ship_with_the_package_and_are_the_bundled_model(finetune):
    """Every fine-tune starts from squeezesam.pt, packaged beside squeezesam.onnx: the same network."""
    import numpy as np

    from sqsam_core.geometry import mask_iou
    from sqsam_core.predictor import SqueezeSAM, default_model_path
    from sqsam_train.export import TorchBackend
    from sqsam_train.network import build_network, has_refine_stage, read_weights

    assert finetune.BASE_WEIGHTS == Path(default_model_path()).with_name("squeezesam.pt")
    weights = read_weights(finetune.BASE_WEIGHTS)
    net = build_network(pretrained=None, refine=has_refine_stage(weights))
    net.load_weights(weights)
    onnx_model = SqueezeSAM(threads=1)
    torch_model = SqueezeSAM(backend=TorchBackend(net.eval()), spec=onnx_model.spec)
    image = np.random.default_rng(1).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    a = onnx_model.predict(image, clicks=[(60, 40, True)])
    b = torch_model.predict(image, clicks=[(60, 40, True)])
    # float16 weights against the float32 export: the same logits up to rounding
    assert np.abs(a.low_res_logits - b.low_res_logits).mean() < 0.1
    assert mask_iou(a.mask, b.mask) > 0.98


FAST = ["--batch", "2", "--crop", "128", "--max-clicks", "1", "--threads", "2", "--no-progress"]


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(finetune, tmp_path):
    import torch

    project = camvid_coco_export(tmp_path / "export", 5)  # a CVAT task exported as COCO 1.0
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # Within warm-up the rate does not depend on the run's length, so 2 + 2 steps must equal 4.
    one = ["--members", "1", *FAST]  # one fine-tune; two members: the next test
    assert sqsam_main(["finetune", str(project), "--steps", "4", "--run-dir", str(straight), "--force",
                       "--out", str(tmp_path / "a.onnx"), *one]) == 0
    assert sqsam_main(["finetune", str(project), "--steps", "2", "--run-dir", str(resumed), "--force",
                       "--out", str(tmp_path / "b.onnx"), *one]) == 0
    assert torch.load(resumed / "last.ckpt", weights_only=False)["step"] == 2
    assert sqsam_main(["finetune", str(project), "--steps", "4", "--run-dir", str(resumed), "--force",
                       "--out", str(tmp_path / "b.onnx"), *one]) == 0
    a = torch.load(straight / "last.ckpt", weights_only=False)
    b = torch.load(resumed / "last.ckpt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for key, value in a["net"].items():
        assert torch.equal(value, b["net"][key]), key
    report = json.loads((resumed / "report.json").read_text())
    assert report["steps"] == 4 and report["written"] == str(tmp_path / "b.onnx")
    from sqsam_core import SqueezeSAM

    exported, base = SqueezeSAM(tmp_path / "b.onnx").spec, SqueezeSAM().spec
    assert exported.model_version == report["model_version"]
    assert exported.hypotheses == base.hypotheses  # a best-of-K base stays best-of-K
    assert report["model_version"].startswith("squeezesam-") and "+ft." in report["model_version"]


def test_members_train_on_shares_of_the_budget_resume_and_are_averaged(finetune, tmp_path):
    import torch

    from sqsam_core import SqueezeSAM
    from sqsam_train.average import average_states
    from sqsam_train.export import TorchBackend
    from sqsam_train.network import build_network, has_refine_stage, read_weights

    project = camvid_subset(tmp_path / "project", 4)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--members", "2", "--mix", "1", "--force", *FAST]
    # 4 steps over two members: two each. The resumed run stops after one step of each, then ends.
    assert sqsam_main(["finetune", str(project), "--steps", "4", "--run-dir", str(straight),
                       "--out", str(tmp_path / "a.onnx"), *common]) == 0
    assert sqsam_main(["finetune", str(project), "--steps", "2", "--run-dir", str(resumed),
                       "--out", str(tmp_path / "b.onnx"), *common]) == 0
    assert [torch.load(resumed / d / "last.ckpt", weights_only=False)["step"] for d in (".", "member1")] == [1, 1]
    assert sqsam_main(["finetune", str(project), "--steps", "4", "--run-dir", str(resumed),
                       "--out", str(tmp_path / "b.onnx"), *common]) == 0
    members = []
    for folder in (".", "member1"):
        a = torch.load(straight / folder / "last.ckpt", weights_only=False)
        b = torch.load(resumed / folder / "last.ckpt", weights_only=False)
        assert a["step"] == b["step"] == 2
        for key, value in a["net"].items():
            assert torch.equal(value, b["net"][key]), (folder, key)
        members.append(a["net"])
    conv = next(k for k, v in members[0].items() if v.ndim == 4)
    assert not torch.equal(members[0][conv], members[1][conv])  # seeds SEED and SEED + 1
    report = json.loads((straight / "report.json").read_text())
    assert report["members"] == 2 and report["steps"] == 4

    # The written model (mix 1) is the mean of the two members' weights.
    weights = read_weights(finetune.BASE_WEIGHTS)
    net = build_network(pretrained=None, refine=has_refine_stage(weights))
    net.load_state_dict(average_states(members))
    written = SqueezeSAM(tmp_path / "a.onnx", threads=1)
    averaged = SqueezeSAM(backend=TorchBackend(net.eval()), spec=written.spec)
    image = np.random.default_rng(3).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    a = written.predict(image, clicks=[(60, 40, True)])
    b = averaged.predict(image, clicks=[(60, 40, True)])
    assert np.abs(a.low_res_logits - b.low_res_logits).max() < 1e-3
    # A run folder remembers its member count: resuming it with another is refused.
    assert sqsam_main(["finetune", str(project), "--steps", "4", "--run-dir", str(straight),
                       "--out", str(tmp_path / "c.onnx"), *FAST, "--members", "3"]) == 2


def test_a_worse_candidate_is_refused(finetune, tmp_path, capsys):
    project = camvid_subset(tmp_path / "project", 5)
    out = tmp_path / "project.onnx"
    # A learning rate of 5 wrecks the weights in two steps: the candidate must score worse.
    args = ["finetune", str(project), "--steps", "2", "--lr", "5", "--run-dir", str(tmp_path / "run"),
            "--out", str(out), *FAST, "--max-clicks", "3", "--members", "1"]
    assert sqsam_main(args) == 3
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["worse_than_base"] and report["written"] is None and not out.exists()
    assert report["candidate"]["NoC@90"] >= report["base"]["NoC@90"]
    assert report["candidate"]["mIoU@1"] < report["base"]["mIoU@1"]
    assert "not written" in capsys.readouterr().out


def test_finetune_without_torch_names_the_extra(monkeypatch, capsys, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert sqsam_main(["finetune", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sqsam: error:") and 'pip install "sqsam[train]"' in err and err.count("\n") == 1


def scored(curves: list[list[float]], max_clicks: int = 5) -> dict:
    """A ``score`` report of objects ``o0, o1 ...`` with these per-click IoU curves."""
    return {"max_clicks": max_clicks,
            "per_object": [{"name": f"o{i}", "ious": ious} for i, ious in enumerate(curves)]}


def test_the_refusal_rule_refuses_only_a_clear_loss_of_clicks_or_first_click(finetune):
    # Clicks per object are NoC@85 + NoC@90: (0.86, 0.91) is 1 + 2, never reaching 0.90 counts 5.
    assert finetune.object_clicks(scored([[0.86, 0.91, 0.91], [0.5, 0.6, 0.7, 0.8, 0.84]])).tolist() == [3, 10]
    base = scored([[0.80, 0.88, 0.92]] * 30)  # every object: 2 clicks to 85 %, 3 to 90 %
    # One object in thirty needs two more clicks: within what the choice of objects explains.
    one_worse = scored([[0.80, 0.84, 0.88, 0.92]] + [[0.80, 0.88, 0.92]] * 29)
    change = finetune.paired_change(one_worse, base)
    assert change["clicks"] == pytest.approx(2 / 30, abs=1e-3) and change["clicks_interval"][0] <= 0
    assert not finetune.is_worse(change)
    # Every object needs a click more at 85 %: clearly worse, although the first click is as good.
    all_worse = scored([[0.80, 0.84, 0.88, 0.92]] * 30)
    assert finetune.is_worse(finetune.paired_change(all_worse, base))
    # Fewer clicks everywhere but a first click that is clearly worse: refused too.
    first_worse = scored([[0.70, 0.91]] * 30)
    change = finetune.paired_change(first_worse, base)
    assert change["clicks"] < 0 and change["first_iou_interval"][1] < 0 and finetune.is_worse(change)
    # Better everywhere, and the same model, are accepted.
    assert not finetune.is_worse(finetune.paired_change(scored([[0.86, 0.93]] * 30), base))
    assert not finetune.is_worse(finetune.paired_change(base, base))
    # A handful of objects: the interval still exists, and a loss on each of them is clear.
    two = scored([[0.80, 0.88, 0.92]] * 2)
    assert finetune.is_worse(finetune.paired_change(scored([[0.10, 0.20, 0.30]] * 2), two))
    with pytest.raises(ValueError):
        finetune.paired_change(scored([[0.9]] * 3), two)


def test_the_candidate_is_the_most_fine_tuned_mix_unless_a_smaller_one_is_clearly_better(finetune):
    def mix(m, curves, worse=False):
        report = scored(curves)
        nocs = finetune.object_clicks(report)  # NoC@85 + NoC@90 per object; clicks() reads their sum
        return {"mix": m, "scored": report, "worse": worse, "NoC@85": 0.0, "NoC@90": float(nocs.mean()),
                "mIoU@1": float(np.mean([c[0] for c in curves]))}

    two_three = [[0.80, 0.88, 0.92]] * 30  # 2 clicks to 85 %, 3 to 90 %
    # A tenth of a click between the mixes, one object in thirty: the most fine-tuned mix.
    half = mix(0.5, two_three)
    full = mix(1.0, [[0.80, 0.84, 0.88, 0.92]] + two_three[1:])
    assert finetune.clicks(half) < finetune.clicks(full)
    assert finetune.choose_mix([half, full])["mix"] == 1.0
    # Every object a click fewer with the smaller mix: it is clearly better, and chosen.
    full = mix(1.0, [[0.80, 0.84, 0.88, 0.92]] * 30)
    assert finetune.choose_mix([half, full])["mix"] == 0.5
    # A refused mix is never chosen while another is accepted, however few its clicks.
    assert finetune.choose_mix([mix(0.5, [[0.7, 0.8, 0.9]] * 30), mix(1.0, [[0.9]] * 30, worse=True)])["mix"] == 0.5
    # Among several clearly better ones, the fewest clicks; all refused: the fewest clicks.
    quarter = mix(0.25, [[0.86, 0.91]] * 30)
    assert finetune.choose_mix([quarter, half, full])["mix"] == 0.25
    refused = [dict(m, worse=True) for m in (quarter, half, full)]
    assert finetune.choose_mix(refused)["mix"] == 0.25


def test_weights_mix_linearly_between_the_base_and_the_fine_tune(finetune):
    import torch

    base = {"w": torch.tensor([0.0, 2.0], dtype=torch.float16), "bn.num_batches_tracked": torch.tensor(5)}
    tuned = {"w": torch.tensor([1.0, 4.0]), "bn.num_batches_tracked": torch.tensor(9), "refine.w": torch.ones(1)}
    half = finetune.interpolate_weights(base, tuned, 0.5)
    assert torch.equal(half["w"], torch.tensor([0.5, 3.0])) and half["w"].dtype == torch.float32
    assert half["bn.num_batches_tracked"] == 9 and torch.equal(half["refine.w"], torch.ones(1))  # not in the base
    assert torch.equal(finetune.interpolate_weights(base, tuned, 1.0)["w"], tuned["w"])
    assert finetune.clicks({"NoC@85": 2.0, "NoC@90": 3.0, "mIoU@1": 0.7}) < finetune.clicks(
        {"NoC@85": 2.0, "NoC@90": 3.0, "mIoU@1": 0.6})


def test_mix_option_takes_numbers_in_zero_one(finetune, capsys):
    args = finetune.parse_args(["x", "--mix", "1,0.25,0.5,0.5"])
    assert args.mix == (0.25, 0.5, 1.0)
    for bad in ("0", "1.5", "a,b", ""):
        with pytest.raises(SystemExit):
            finetune.parse_args(["x", "--mix", bad])
    assert "expected numbers in (0, 1]" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux only (PR_SET_PDEATHSIG)")
def test_a_run_started_by_the_backend_dies_with_it(finetune, tmp_path):
    """The backend pauses its fine-tunes with SIGSTOP while clicks are answered; one whose backend
    died must not stay behind, stopped."""
    import os
    import subprocess
    import sys
    import time

    child = ("import os, signal, time\n"
             "from sqsam_train.finetune import exit_with_parent\n"
             "exit_with_parent()\n"
             "print(os.getpid(), flush=True)\n"
             "os.kill(os.getpid(), signal.SIGSTOP)\n"  # as the backend pauses it
             "time.sleep(60)\n")
    parent = ("import os, subprocess, sys\n"
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE, text=True,\n"
              "                     env=dict(os.environ, SQSAM_EXIT_WITH_PARENT=str(os.getpid())))\n"
              "print(p.stdout.readline().strip(), flush=True)\n")  # then the parent exits, the child stopped
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    pid = int(out.stdout.strip())
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
