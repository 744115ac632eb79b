"""The RITM evaluation protocol and its metrics (NoC, NoF, mIoU@k, zero-click IoU, latency).

Per object: start from an empty prediction; for each of up to ``max_clicks`` clicks, put the
next click by :func:`sqsam_core.geometry.next_click` (interior point of the larger error region,
positive for a false negative, negative for a false positive), run the model with all clicks so
far and the previous prediction fed back, and record the IoU (ignore band left out).

* NoC@t: clicks needed to reach IoU >= t (``max_clicks`` when never reached);
* NoF@t: objects that never reach t within ``max_clicks``;
* mIoU@k: mean IoU after k clicks;
* zero-click IoU: IoU of the first object :meth:`SqueezeSAM.automask` returns (0 if none).

Data sets use the layout of ``../shared/data``: ``images/<stem>.jpg|png``, ``masks/<mask>.png``
(255 object, 0 background, 128 ignore), a mask named ``<stem>``, ``<stem>a``, ``<stem>_<k>``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from sqsam_core import geometry
from sqsam_core.errors import InvalidImageError, SqsamError
from sqsam_core.imageio import load_image

THRESHOLDS = (0.85, 0.90)
IGNORE_VALUE = 128
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class EvalObject:
    """One object to segment: ``image`` (H, W, 3) uint8, ``gt`` and ``ignore`` (H, W) bool."""

    name: str
    image: np.ndarray
    gt: np.ndarray
    ignore: np.ndarray | None


def image_stem_for_mask(mask_stem: str, image_stems: set[str]) -> str | None:
    """The image a mask belongs to: ``<stem>``, ``<stem>a``/``b`` or ``<stem>_<k>``."""
    if mask_stem in image_stems:
        return mask_stem
    if "_" in mask_stem and mask_stem.rsplit("_", 1)[0] in image_stems:
        return mask_stem.rsplit("_", 1)[0]
    if mask_stem[:-1] in image_stems:
        return mask_stem[:-1]
    return None


def read_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(object, ignore)`` (H, W) bool of a mask PNG: above 128 object, 128 ignore; ``ignore`` is
    None when the mask has no ignore pixel. Raises :class:`InvalidImageError` if unreadable."""
    try:
        with Image.open(path) as im:
            raw = np.asarray(im.convert("L"))
    except (OSError, ValueError) as exc:
        raise InvalidImageError(f"{path}: not a readable mask image ({exc})") from None
    ignore = raw == IGNORE_VALUE
    return raw > IGNORE_VALUE, (ignore if ignore.any() else None)


def mask_image_pairs(dataset_dir: str | Path) -> Iterator[tuple[Path, Path | None]]:
    """Every ``masks/*.png`` of a data set folder in sorted order, with the ``images/`` file it
    belongs to (:func:`image_stem_for_mask`), or None when no image matches."""
    root = Path(dataset_dir)
    images = {p.stem: p for p in sorted((root / "images").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    stems = set(images)
    for mask_path in sorted((root / "masks").glob("*.png")):
        stem = image_stem_for_mask(mask_path.stem, stems)
        yield mask_path, (images[stem] if stem is not None else None)


def iter_dataset(dataset_dir: str | Path, limit: int | None = None) -> Iterator[EvalObject]:
    """Objects of a data set folder, in sorted mask order. Raises FileNotFoundError if malformed."""
    root = Path(dataset_dir)
    if not (root / "images").is_dir() or not (root / "masks").is_dir():
        raise FileNotFoundError(f"{root} must hold images/ and masks/")
    count = 0
    for mask_path, image_path in mask_image_pairs(root):
        if image_path is None:
            continue
        gt, ignore = read_mask(mask_path)
        yield EvalObject(mask_path.stem, load_image(image_path), gt, ignore)
        count += 1
        if limit is not None and count >= limit:
            return


@dataclass
class ObjectResult:
    name: str
    ious: list[float]  # IoU after 1..max_clicks clicks
    click_ms: list[float]  # model time per click (cached image), milliseconds
    zero_click_iou: float | None


def evaluate_object(model, obj: EvalObject, max_clicks: int = 20, zero_click: bool = True,
                    stop_iou: float | None = None) -> ObjectResult:
    """Run the RITM protocol on one object with a :class:`~sqsam_core.SqueezeSAM`.

    ``stop_iou``: stop clicking once the IoU reaches it and repeat that IoU for the remaining
    clicks (NoC up to that threshold is unchanged; later mIoU@k are then lower bounds' stand-ins).
    """
    prepared = model.prepare(obj.image)
    pred_mask = np.zeros_like(obj.gt)
    clicks: list[geometry.Click] = []
    prev = None
    ious, times = [], []
    for _ in range(max_clicks):
        click = geometry.next_click(pred_mask, obj.gt, obj.ignore)
        if click is None:  # perfect already: the IoU stays where it is
            ious.append(ious[-1] if ious else 1.0)
            continue
        clicks.append(click)
        start = time.perf_counter()
        prev = model.predict(prepared, clicks, prev=prev)
        times.append((time.perf_counter() - start) * 1000)
        pred_mask = prev.mask
        ious.append(geometry.mask_iou(pred_mask, obj.gt, obj.ignore))
        if stop_iou is not None and ious[-1] >= stop_iou:
            ious += [ious[-1]] * (max_clicks - len(ious))
            break
    zero = zero_click_iou(model, prepared, obj.gt, obj.ignore) if zero_click else None
    return ObjectResult(obj.name, ious, times, zero)


def zero_click_iou(model, image, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """IoU of the first :meth:`SqueezeSAM.automask` object with ``gt`` (``(H, W)`` bool); 0 if none.

    ``image``: what ``automask`` takes (an RGB array, a path or a prepared image).
    """
    objects = model.automask(image)
    return geometry.mask_iou(objects[0].mask, gt, ignore) if objects else 0.0


def clicks_to_reach(ious: list[float], threshold: float, max_clicks: int) -> int:
    """NoC for one object: the first click count whose IoU >= threshold, else ``max_clicks``."""
    for k, iou in enumerate(ious[:max_clicks], start=1):
        if iou >= threshold:
            return k
    return max_clicks


def summarize(results: list[ObjectResult], max_clicks: int) -> dict:
    """Aggregate metrics (see module docstring) as a JSON-friendly dict."""
    if not results:
        raise SqsamError("no objects were evaluated")
    ious = np.array([r.ious for r in results])  # (N, max_clicks)
    report: dict = {"objects": len(results), "max_clicks": max_clicks}
    for t in THRESHOLDS:
        nocs = [clicks_to_reach(r.ious, t, max_clicks) for r in results]
        report[f"NoC@{round(t * 100)}"] = float(np.mean(nocs))
        report[f"NoF@{round(t * 100)}"] = int(sum(not any(i >= t for i in r.ious) for r in results))
    report["mIoU@k"] = [float(v) for v in ious.mean(axis=0)]
    zero = [r.zero_click_iou for r in results if r.zero_click_iou is not None]
    report["zero_click_iou"] = float(np.mean(zero)) if zero else None
    click_ms = [r.click_ms for r in results if r.click_ms]
    times = np.concatenate(click_ms) if click_ms else np.zeros(1)
    report["click_ms_p50"] = float(np.percentile(times, 50))
    report["click_ms_p95"] = float(np.percentile(times, 95))
    report["per_object"] = [{"name": r.name, "ious": [round(i, 4) for i in r.ious], "zero_click_iou": r.zero_click_iou}
                            for r in results]
    return report


def evaluate(model, objects: Iterable[EvalObject], max_clicks: int = 20, zero_click: bool = True,
             progress: bool = False, total: int | None = None, stop_iou: float | None = None) -> dict:
    """Evaluate a model on objects; returns :func:`summarize`'s report (``stop_iou``: :func:`evaluate_object`)."""
    iterator = objects
    if progress:
        from tqdm import tqdm

        iterator = tqdm(objects, total=total, desc="eval", unit="obj", dynamic_ncols=True)
    results = [evaluate_object(model, obj, max_clicks, zero_click, stop_iou) for obj in iterator]
    report = summarize(results, max_clicks)
    report["zoom_in"] = getattr(model, "zoom_in", None) is not None
    return report


def evaluate_dataset(model, dataset_dir: str | Path, max_clicks: int = 20, limit: int | None = None,
                     zero_click: bool = True, progress: bool = True) -> dict:
    """Evaluate on a data set folder (layout in the module docstring)."""
    root = Path(dataset_dir)
    total = len(list((root / "masks").glob("*.png"))) if (root / "masks").is_dir() else None
    if limit is not None and total is not None:
        total = min(total, limit)
    report = evaluate(model, iter_dataset(root, limit), max_clicks, zero_click, progress, total)
    report["dataset"] = root.name
    report["model_version"] = model.spec.model_version
    return report


def format_report(report: dict) -> str:
    """A short human-readable table of a report."""
    miou = report["mIoU@k"]
    ks = [k for k in (1, 3, 5, 10, 20) if k <= len(miou)]
    lines = [
        f"dataset {report.get('dataset', '?')}  model {report.get('model_version', '?')}  objects {report['objects']}"
        f"  zoom-in {'on' if report.get('zoom_in', True) else 'off'}",
        f"NoC@85 {report['NoC@85']:.2f}   NoC@90 {report['NoC@90']:.2f}   "
        f"NoF@85 {report['NoF@85']}   NoF@90 {report['NoF@90']}",
        "   ".join(f"mIoU@{k} {miou[k - 1]:.3f}" for k in ks),
        (f"zero-click IoU {report['zero_click_iou']:.3f}" if report.get("zero_click_iou") is not None
         else "zero-click IoU n/a"),
        f"per-click latency p50 {report['click_ms_p50']:.1f} ms   p95 {report['click_ms_p95']:.1f} ms",
    ]
    return "\n".join(lines)
