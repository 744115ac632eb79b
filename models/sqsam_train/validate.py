"""Score checkpoints on the held-out validation split of train/ (never on eval/).

    python -m sqsam_train.validate runs/v1/step001000.ckpt runs/v1/last.ckpt

The network runs behind :class:`sqsam_core.SqueezeSAM` through a PyTorch backend (or ONNX Runtime
for an exported ``.onnx`` file, faster on CPU), so the numbers come from exactly the
pre/post-processing and click protocol that serving and ``sqsam eval`` use. Checkpoints are
picked on these numbers; ``salient_zero_click_iou`` (the first auto-mask object against every
held-out ECSSD / Human object) stands in for the zero-click IoU of the eval sets, which are
salient-object images too. Each JSON line also carries every object's NoC@90, for the paired
comparison of two models on the same objects (``sqsam_train.compare``).

Two more readings, reported beside the split's and never mixed into it:

* ``parts``: a click at the interior of every part of the held-out people of the part-labelled
  sets (CCP; :func:`sqsam_core.partwhole.evaluate_part_clicks`): whole-object IoU of the default
  mask and part IoU of the ``granularity="part"`` mask;
* ``unseen``: NoC@90 and mIoU@1 on a folder from a domain no training set covers (``--unseen``;
  default ``project/CamVid-cars/train``: road scenes, which the general model never trains on),
  to see generalisation rather than fit.
"""

from __future__ import annotations

import argparse
import json
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from sqsam_core.config import DATA_HELP, data_root
from sqsam_core.contract import DEFAULT_INPUT_SIZE
from sqsam_core.datasets import iter_eval_objects, read_annotations
from sqsam_core.edges import EdgeRefine
from sqsam_core.evaluation import EvalObject, clicks_to_reach, evaluate, format_report, summarize, zero_click_iou
from sqsam_core.partwhole import evaluate_part_clicks
from sqsam_core.predictor import SqueezeSAM, ZoomIn
from sqsam_train.band_oracle import evaluate_with_band_oracle
from sqsam_train.compare import PER_OBJECT
from sqsam_train.data import PART_SETS, SALIENT_SETS, load_training_data, set_name
from sqsam_train.export import TorchBackend, load_checkpoint, spec_for
from sqsam_train.learned_edges import LearnedEdgeRefine


def validation_objects(sets: dict, per_set: int) -> list[EvalObject]:
    """Up to ``per_set`` held-out objects of each training set (``load_training_data``'s sets)."""
    return [EvalObject(entry.name, entry.image, entry.masks[0], None)
            for _train, val in sets.values() for entry in val[:per_set]]


def salient_objects(sets: dict) -> list[EvalObject]:
    """Every held-out object of the one-main-object sets (ECSSD, Human): the zero-click proxy."""
    return [EvalObject(entry.name, entry.image, entry.masks[0], None)
            for name in SALIENT_SETS for entry in sets[name][1]]


def salient_zero_click_iou(model: SqueezeSAM, objects: list[EvalObject]) -> float:
    """Mean zero-click IoU (the first auto-mask object) over ``objects``."""
    ious = [zero_click_iou(model, obj.image, obj.gt) for obj in objects]
    return float(np.mean(ious)) if ious else 0.0


def part_items(sets: dict, per_set: int) -> list[tuple]:
    """Up to ``per_set`` held-out people of each part-labelled set, as ``evaluate_part_clicks`` takes them."""
    return [(entry.name, entry.image, entry.masks[0], entry.parts)
            for name in PART_SETS if name in sets for entry in sets[name][1][:per_set]]


def part_summary(model: SqueezeSAM, items: list[tuple]) -> dict | None:
    """Whole IoU (default mask) and part IoU (``granularity="part"``) of the part clicks on ``items``."""
    if not items:
        return None
    report = evaluate_part_clicks(model, items, "parts")
    return {k: round(report[k], 4) for k in ("whole_iou", "part_iou", "best_of_k_part_iou")} | {
        "part_clicks": report["part_clicks"]}


def unseen_summary(model: SqueezeSAM, objects: list[EvalObject], max_clicks: int) -> dict | None:
    """NoC@85 / NoC@90 / mIoU@1 on the unseen-domain objects."""
    if not objects:
        return None
    report = evaluate(model, objects, max_clicks=max_clicks, zero_click=False, progress=False)
    return {"NoC@85": round(report["NoC@85"], 3), "NoC@90": round(report["NoC@90"], 3),
            "mIoU@1": round(report["mIoU@k"][0], 4), "objects": report["objects"]}


def unseen_objects(folder: Path | None, limit: int) -> list[EvalObject]:
    """The first ``limit`` objects of an ``images/`` + ``masks/`` folder (or COCO / LS JSON); none without one."""
    if folder is None or not folder.exists():
        return []
    return list(islice(iter_eval_objects(read_annotations(folder).images), limit))


def noc90_per_object(report: dict) -> dict[str, int]:
    """Clicks each held-out object needs to reach 90 % IoU (``max_clicks`` if never), by name."""
    return {obj["name"]: clicks_to_reach(obj["ious"], 0.9, report["max_clicks"]) for obj in report["per_object"]}


def noc90_by_set(report: dict) -> dict[str, float]:
    """NoC@90 of each training set's held-out objects (names are ``<set>/<stem>``)."""
    by_set: dict[str, list[int]] = {}
    for name, noc in noc90_per_object(report).items():
        by_set.setdefault(set_name(name), []).append(noc)
    return {name: round(float(np.mean(nocs)), 2) for name, nocs in sorted(by_set.items())}


def model_for(path: Path, input_size: int, threads: int, **options) -> SqueezeSAM:
    """The serving predictor on a checkpoint (PyTorch, at ``input_size``) or an ``.onnx`` file (its own S)."""
    if path.suffix == ".onnx":
        if input_size != DEFAULT_INPUT_SIZE:
            raise SystemExit(f"--input-size applies to checkpoints; {path} fixes its own")
        return SqueezeSAM(path, threads=threads, **options)
    net = load_checkpoint(path)
    return SqueezeSAM(backend=TorchBackend(net), spec=spec_for(net, path.stem, input_size), **options)


def edge_refiner(args: argparse.Namespace) -> EdgeRefine | LearnedEdgeRefine | None:
    """The edge refinement ``--no-edge-refine`` / ``--edge-net`` ask for (default: the guided filter)."""
    if args.no_edge_refine:
        return None
    return LearnedEdgeRefine(args.edge_net, threads=args.threads) if args.edge_net else EdgeRefine()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", type=Path, nargs="+", help=".ckpt / .pt files, or exported .onnx files")
    p.add_argument("--data", type=Path, default=data_root(), help=f"data root (default {DATA_HELP})")
    p.add_argument("--cache", type=Path, default=None, help="the training run's data-cache.pkl")
    p.add_argument("--per-set", type=int, default=12)
    p.add_argument("--max-clicks", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-zoom", action="store_true", help="every click sees the whole image")
    p.add_argument("--input-size", type=int, default=DEFAULT_INPUT_SIZE,
                   help="S the network sees (it is fully convolutional; serving reads S from the ONNX file)")
    p.add_argument("--zoom-expansion", type=float, default=ZoomIn.expansion, help="ZoomIn.expansion")
    p.add_argument("--zoom-min-side", type=float, default=ZoomIn.min_side, help="ZoomIn.min_side, image pixels")
    p.add_argument("--no-edge-refine", action="store_true", help="masks as the network upsamples them")
    p.add_argument("--oracle-band", type=int, default=0, metavar="R",
                   help="diagnostic: the ground truth pasted within R px of each mask's boundary (band_oracle)")
    p.add_argument("--edge-net", type=Path, default=None,
                   help="refine edges with this learned edge refiner (.onnx) instead of the guided filter")
    p.add_argument("--unseen", type=Path, default=None,
                   help="a folder from a domain no training set covers (default DATA/project/CamVid-cars/train)")
    p.add_argument("--unseen-limit", type=int, default=100, help="objects of --unseen scored (default 100)")
    p.add_argument("--no-extra", action="store_true", help="only the split: no part clicks, no unseen domain")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = load_training_data(args.data, cache=args.cache)
    objects = validation_objects(sets, args.per_set)
    salient = salient_objects(sets)
    unseen_dir = args.unseen or args.data / "project" / "CamVid-cars" / "train"
    parts = [] if args.no_extra else part_items(sets, args.per_set)
    unseen = [] if args.no_extra else unseen_objects(unseen_dir, args.unseen_limit)
    for ckpt in args.checkpoints:
        zoom = ZoomIn(expansion=args.zoom_expansion, min_side=args.zoom_min_side)
        model = model_for(ckpt, args.input_size, args.threads, zoom_in=None if args.no_zoom else zoom,
                          edge_refine=edge_refiner(args))
        if args.oracle_band:
            results = evaluate_with_band_oracle(model, objects, args.oracle_band, args.max_clicks)
            report = summarize(results, args.max_clicks)
            print(json.dumps({"checkpoint": str(ckpt), "oracle_band": args.oracle_band,
                              **{k: report[k] for k in ("NoC@85", "NoC@90")}, "NoC@90_by_set": noc90_by_set(report),
                              PER_OBJECT: noc90_per_object(report)}), flush=True)
            continue
        report = evaluate(model, objects, max_clicks=args.max_clicks, progress=False)
        report["dataset"] = "train-validation"
        report["model_version"] = ckpt.name
        print(format_report(report))
        print(json.dumps({"checkpoint": str(ckpt), "input_size": args.input_size,
                          "zoom": None if args.no_zoom else [zoom.expansion, zoom.min_side],
                          **{k: report[k] for k in ("NoC@85", "NoC@90", "zero_click_iou")},
                          "mIoU@1": report["mIoU@k"][0], "NoC@90_by_set": noc90_by_set(report),
                          "salient_zero_click_iou": salient_zero_click_iou(model, salient),
                          "parts": part_summary(model, parts),
                          "unseen": unseen_summary(model, unseen, args.max_clicks) | {"folder": str(unseen_dir)}
                          if unseen else None,
                          PER_OBJECT: noc90_per_object(report)}), flush=True)


if __name__ == "__main__":
    main()
