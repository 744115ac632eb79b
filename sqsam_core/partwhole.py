"""Part and whole: does a click on a part select the whole object, and can it select the part?

A part-labelled data set (``images/<stem>.jpg``, ``labels/<stem>.png``: one label id per pixel,
0 = background; ``masks/<stem>.png``: the whole object, 255) gives, for every part covering at
least ``MIN_PART_SHARE`` of its object, one click at the part's interior point
(:func:`sqsam_core.geometry.interior_point`). Each click is predicted twice:

* ``granularity="whole"`` (the default mask): IoU with the whole object;
* ``granularity="part"``: IoU with the part (every pixel of its label id: both shoes are one part).

``best_of_k_part_iou`` is the best IoU with the part over all K hypotheses, what a user could
reach by cycling through ``pred.masks``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from sqsam_core import geometry
from sqsam_core.errors import SqsamError
from sqsam_core.evaluation import read_mask
from sqsam_core.imageio import load_image

MIN_PART_SHARE = 0.02  # parts smaller than this share of their object are not clicked
WHOLE_THRESHOLD = 0.85  # reported: share of part clicks whose default mask reaches this IoU with the object
PART_THRESHOLD = 0.70  # reported: share of part clicks whose part mask reaches this IoU with the part


def part_masks(labels: np.ndarray, min_share: float = MIN_PART_SHARE,
               min_pixels: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A label map ``(H, W)`` int (0 = background) -> (the whole object ``label > 0``, its parts).

    A part is every pixel of one label id, kept when it covers at least ``min_share`` of the whole
    object and ``min_pixels``; parts come in label-id order, each ``(H, W)`` bool.
    """
    whole = labels > 0
    need = max(min_pixels, min_share * whole.sum())
    ids, counts = np.unique(labels[whole], return_counts=True)
    return whole, [labels == i for i, n in zip(ids, counts) if n >= need]


def has_parts(dataset_dir: str | Path) -> bool:
    """True for a folder with ``labels/`` label maps beside ``images/``."""
    root = Path(dataset_dir)
    return (root / "labels").is_dir() and any((root / "labels").glob("*.png"))


def iter_part_clicks(dataset_dir: str | Path, limit: int | None = None
                     ) -> Iterator[tuple[str, np.ndarray, np.ndarray, list[np.ndarray]]]:
    """``(stem, image (H, W, 3) uint8, whole (H, W) bool, parts)`` per labelled image, sorted by stem.

    The whole object is ``masks/<stem>.png`` (:func:`evaluation.read_mask`) where present, else ``label > 0``.
    """
    root = Path(dataset_dir)
    images = {p.stem: p for p in (root / "images").iterdir()} if (root / "images").is_dir() else {}
    for count, label_path in enumerate(sorted((root / "labels").glob("*.png"))):
        if limit is not None and count >= limit:
            return
        if label_path.stem not in images:
            continue
        with Image.open(label_path) as im:
            labels = np.asarray(im)
        if labels.ndim != 2:
            raise SqsamError(f"{label_path}: a label map must have one channel")
        whole, parts = part_masks(labels)
        mask_path = root / "masks" / label_path.name
        if mask_path.is_file():
            whole = read_mask(mask_path)[0]
        yield label_path.stem, load_image(images[label_path.stem]), whole, parts


def evaluate_parts(model, dataset_dir: str | Path, limit: int | None = None, progress: bool = False) -> dict:
    """Part clicks on a part-labelled data set (module docstring); a JSON-friendly report."""
    items = iter_part_clicks(dataset_dir, limit)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="part clicks", unit="img", dynamic_ncols=True)
    return evaluate_part_clicks(model, items, Path(dataset_dir).name)


def evaluate_part_clicks(model, items, dataset: str) -> dict:
    """Part clicks on ``items``, ``(name, image (H, W, 3) uint8, whole (H, W) bool, parts)`` each
    with every part ``(H, W)`` bool (as :func:`iter_part_clicks` yields them): the report of
    :func:`evaluate_parts`, named ``dataset``."""
    rows = []
    for stem, image, whole, parts in items:
        prepared = model.prepare(image)
        for index, part in enumerate(parts):
            x, y, _ = geometry.interior_point(part)
            click = [(float(x), float(y), True)]
            as_whole = model.predict(prepared, click)
            as_part = model.predict(prepared, click, granularity="part")
            rows.append({
                "image": stem, "part": index, "click": [int(x), int(y)],
                "whole_iou": geometry.mask_iou(as_whole.mask, whole),
                "part_iou": geometry.mask_iou(as_part.mask, part),
                "best_of_k_part_iou": max(geometry.mask_iou(m, part) for m in as_part.masks),
            })
    if not rows:
        raise SqsamError(f"{dataset}: no part clicks "
                         f"(labels/ with parts over {MIN_PART_SHARE:.0%} of their object)")
    column = {key: np.array([r[key] for r in rows]) for key in ("whole_iou", "part_iou", "best_of_k_part_iou")}
    return {
        "dataset": dataset,
        "model_version": model.spec.model_version,
        "part_clicks": len(rows),
        "images": len({r["image"] for r in rows}),
        "whole_iou": float(column["whole_iou"].mean()),
        f"whole_iou>={WHOLE_THRESHOLD:.2f}": float((column["whole_iou"] >= WHOLE_THRESHOLD).mean()),
        "part_iou": float(column["part_iou"].mean()),
        f"part_iou>={PART_THRESHOLD:.2f}": float((column["part_iou"] >= PART_THRESHOLD).mean()),
        "best_of_k_part_iou": float(column["best_of_k_part_iou"].mean()),
        "per_click": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }


def format_part_report(report: dict) -> str:
    """Two lines: the default mask against the object, the part mask against the part."""
    return "\n".join([
        f"part clicks {report['part_clicks']} on {report['images']} images  model {report['model_version']}",
        f"default (whole) mask vs object: mean IoU {report['whole_iou']:.3f}, "
        f">= {WHOLE_THRESHOLD:.2f} in {report[f'whole_iou>={WHOLE_THRESHOLD:.2f}']:.0%}",
        f"granularity=part mask vs part:  mean IoU {report['part_iou']:.3f}, "
        f">= {PART_THRESHOLD:.2f} in {report[f'part_iou>={PART_THRESHOLD:.2f}']:.0%} "
        f"(best of K: {report['best_of_k_part_iou']:.3f})",
    ])
