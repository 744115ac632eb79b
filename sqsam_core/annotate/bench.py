"""``sqsam bench-annotate``: bulk-annotation throughput, peak memory and box-to-mask quality.

On one image set (default ``eval/GrabCut``, each image ``--repeat`` times under other names),
one run of ``sqsam annotate`` per way of running it: one process, ``--workers N`` local
processes, and a 2-worker Dask ``LocalCluster``; for box-to-mask (the data set's ground-truth
boxes) and for auto-masks. Each gives images/s (wall clock of the whole run, worker start-up
and model loading included) and the peak RSS summed over this process and all its children
(sampled every 50 ms). The box runs' COCO files are compared byte for byte.

Quality: the mean mask IoU against the ground truth of one mask per ground-truth box (128
band ignored, as :mod:`sqsam_core.evaluation` does), for boxes drawn around the object with its
128 band (``255 | 128``) and around the object alone (``255``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def ground_truth(dataset_dir: str | os.PathLike, names: list[str] | None = None) -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs of a data set folder (``images/``, ``masks/`` with one mask per
    image named like it), sorted by image name; ``names``: only these image file names."""
    from sqsam_core.evaluation import mask_image_pairs

    pairs: dict[str, tuple[Path, Path]] = {}
    for mask, image in mask_image_pairs(dataset_dir):
        if image is not None and image.name not in pairs and (names is None or image.name in names):
            pairs[image.name] = (image, mask)
    return [pairs[name] for name in sorted(pairs)]


def read_gt(mask_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(object, ignore)`` (H, W) bool masks: 255 = object, 128 = ignore band (all False if none)."""
    from sqsam_core.evaluation import read_mask

    obj, ignore = read_mask(mask_path)
    return obj, (ignore if ignore is not None else np.zeros_like(obj))


def write_gt_boxes(pairs: list[tuple[Path, Path]], out: str | os.PathLike, with_band: bool = True,
                   copies: int = 1) -> Path:
    """A COCO JSON of ground-truth boxes (``bbox = [x, y, w, h]``, tight around the 255 pixels, or
    around 255 and 128 with ``with_band``) with their RLE ``segmentation`` (the 255 pixels), so it
    serves as ``--boxes`` and as ``COCOeval`` ground truth. ``copies`` > 1 lists every image
    again as ``r<k>_<name>`` (see :func:`repeat_images`)."""
    from sqsam_core.formats import mask_to_coco_rle
    from sqsam_core.geometry import mask_box

    images, annotations = [], []
    for copy in range(copies):
        for image_path, mask_path in pairs:
            obj, ignore = read_gt(mask_path)
            x0, y0, x1, y1 = (int(v) for v in mask_box(obj | ignore if with_band else obj))
            image_id = len(images) + 1
            name = image_path.name if copies == 1 else f"r{copy}_{image_path.name}"
            images.append({"id": image_id, "file_name": name, "width": obj.shape[1], "height": obj.shape[0]})
            annotations.append({"id": 100 + image_id, "image_id": image_id, "category_id": 1,
                                "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1], "area": int(obj.sum()),
                                "iscrowd": 0, "segmentation": mask_to_coco_rle(obj)})
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    Path(out).write_text(json.dumps(data))
    return Path(out)


def repeat_images(pairs: list[tuple[Path, Path]], folder: Path, copies: int) -> Path:
    """``folder`` holding symbolic links ``r<k>_<name>`` to every image, ``copies`` times."""
    folder.mkdir(parents=True, exist_ok=True)
    for copy in range(copies):
        for image_path, _ in pairs:
            (folder / f"r{copy}_{image_path.name}").symlink_to(image_path.resolve())
    return folder


def box_iou(coco_out: str | os.PathLike, pairs: list[tuple[Path, Path]]) -> list[float]:
    """IoU (128 band ignored) of each image's first mask in a ``sqsam annotate --format coco``
    file with its ground truth, in ``pairs`` order (0 for an image without a mask)."""
    from sqsam_core.formats import coco_rle_to_mask
    from sqsam_core.geometry import mask_iou

    data = json.loads(Path(coco_out).read_text())
    by_name = {im["file_name"]: im["id"] for im in data["images"]}
    first: dict[int, dict] = {}
    for ann in data["annotations"]:
        first.setdefault(ann["image_id"], ann)
    ious = []
    for image_path, mask_path in pairs:
        obj, ignore = read_gt(mask_path)
        ann = first.get(by_name.get(image_path.name, -1))
        ious.append(mask_iou(coco_rle_to_mask(ann["segmentation"]), obj, ignore) if ann else 0.0)
    return ious


class PeakRSS:
    """Peak of the RSS summed over this process and its children, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self.psutil, self.interval, self.peak = psutil, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = self.psutil.Process()
        total = 0
        for proc in [me] + me.children(recursive=True):
            try:
                total += proc.memory_info().rss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_bench(dataset_dir: str | os.PathLike, workers: int, copies: int = 2, limit: int | None = None,
              dask: bool = True, log=print) -> dict:
    """The measurements described in the module docstring, as a JSON-ready dict."""
    from sqsam_core.annotate.command import annotate
    from sqsam_core.annotate.work import AnnotateSettings

    try:
        import psutil  # noqa: F401
    except ImportError:
        from sqsam_core.annotate.inputs import InputError

        raise InputError('bench-annotate measures memory with psutil: pip install "sqsam[dask]"') from None
    pairs = ground_truth(dataset_dir)[:limit]
    if not pairs:
        from sqsam_core.annotate.inputs import InputError

        raise InputError(f"{dataset_dir}: no images with masks (images/, masks/)")
    ways = [("1 process", {"workers": 1}), (f"{workers} processes", {"workers": workers})]
    if dask:
        ways.append(("Dask LocalCluster, 2 workers", {"workers": 2, "dask": "local"}))
    report: dict = {"dataset": str(dataset_dir), "images": len(pairs) * copies, "distinct_images": len(pairs),
                    "throughput": [], "quality": {}}
    work = Path(tempfile.mkdtemp(prefix="sqsam-bench-annotate-"))
    quiet = open(os.devnull, "w")
    try:
        folder = repeat_images(pairs, work / "images", copies)
        boxes = write_gt_boxes(pairs, work / "boxes.json", with_band=True, copies=copies)
        outputs: dict[str, bytes] = {}
        for mode, box_file in (("boxes", boxes), ("automask", None)):
            for name, options in ways:
                out = work / f"{mode}-{len(report['throughput'])}.json"
                with PeakRSS() as rss:
                    started = time.perf_counter()
                    summary = annotate([str(folder)], out, "coco", str(box_file) if box_file else None,
                                       AnnotateSettings(), progress_stream=quiet, **options)
                    seconds = time.perf_counter() - started
                row = {"mode": mode, "way": name, "images": summary.images, "objects": summary.objects,
                       "failed": len(summary.failures), "seconds": round(seconds, 2),
                       "images_per_s": round(summary.images / seconds, 2), "peak_rss_mb": round(rss.peak / 2**20)}
                report["throughput"].append(row)
                log(f"{mode:8s}  {name:30s}  {row['images_per_s']:6.2f} images/s  peak RSS {row['peak_rss_mb']:5d} MB"
                    f"  ({row['images']} images, {row['objects']} objects, {row['failed']} failed, {row['seconds']} s)")
                if mode == "boxes":
                    outputs[name] = out.read_bytes()
        report["box_outputs_identical"] = len(set(outputs.values())) == 1
        log(f"box-to-mask COCO files identical across the ways of running: {report['box_outputs_identical']}")
        for band in (True, False):
            box_file = write_gt_boxes(pairs, work / f"gt-{band}.json", with_band=band)
            out = work / f"quality-{band}.json"
            annotate([str(Path(dataset_dir) / "images")], out, "coco", str(box_file), AnnotateSettings(),
                     workers=workers, progress_stream=quiet)
            ious = box_iou(out, [(p, m) for p, m in pairs])
            key = "box_255_and_128" if band else "box_255"
            report["quality"][key] = {"mean_iou": round(float(np.mean(ious)), 4),
                                      "min_iou": round(float(np.min(ious)), 4), "objects": len(ious)}
            log(f"box-to-mask mean IoU ({'box of 255|128' if band else 'box of 255'}): "
                f"{np.mean(ious):.4f} (min {np.min(ious):.3f}, {len(ious)} objects)")
    finally:
        quiet.close()
        shutil.rmtree(work, ignore_errors=True)
    return report


def cmd_bench_annotate(args) -> int:
    from sqsam_core.annotate.command import default_workers
    from sqsam_core.config import data_root

    data = Path(args.data) if args.data else data_root()
    dataset = data / "eval" / args.dataset if (data / "eval" / args.dataset).is_dir() else data
    if not (dataset / "images").is_dir() or not (dataset / "masks").is_dir():
        from sqsam_core.annotate.inputs import InputError

        raise InputError(f"{dataset}: no images/ and masks/ (give --data DIR)")
    report = run_bench(dataset, args.workers or default_workers(), args.repeat, args.limit, not args.no_dask)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"report: {args.json}")
    return 0


def register_bench(subparsers) -> None:
    from sqsam_core.argtypes import positive_int
    from sqsam_core.config import DATA_HELP

    p = subparsers.add_parser(
        "bench-annotate",
        help="bulk annotation: images/s and peak RSS for 1 and N processes and Dask, box-to-mask IoU",
        description="Run sqsam annotate on eval/GrabCut (boxes from the ground truth, and auto-masks) with one "
                    "process, N processes and a 2-worker Dask LocalCluster: images/s, peak RSS, identical "
                    "outputs, and the box-to-mask mean IoU. See docs/scaling.md.",
    )
    p.add_argument("--data", metavar="DIR", default=None,
                   help=f"data root holding eval/<DATASET>, or a data set folder (default {DATA_HELP})")
    p.add_argument("--dataset", default="GrabCut", help="data set under eval/ (default GrabCut)")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="N for the N-process run (default: cores)")
    p.add_argument("--repeat", type=positive_int, default=2, metavar="K",
                   help="each image K times in the throughput runs (default 2)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N images")
    p.add_argument("--no-dask", action="store_true", help="skip the Dask LocalCluster run")
    p.add_argument("--json", metavar="OUT.json", help="write the report as JSON")
    p.set_defaults(func=cmd_bench_annotate)
