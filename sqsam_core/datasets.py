"""Read a project's annotations: a COCO instances JSON, a Label Studio JSON export, or a folder.

One reader for ``sqsam eval`` and ``sqsam finetune`` (and the Label Studio backend's training).
Every reader returns :class:`Annotations`: a list of :class:`AnnotatedImage` (an image and its
object masks) plus the annotations it had to skip, each with the reason.

* **folder**: ``images/<stem>.jpg|png`` and ``masks/<mask>.png`` (255 object, 0 background,
  128 ignore), a mask named ``<stem>``, ``<stem>a`` or ``<stem>_<k>`` (``../shared/data``'s layout).
* **COCO** instances JSON (``images``, ``annotations``; CVAT's "COCO 1.0" export): polygon or RLE
  (compressed or not) ``segmentation``; ``iscrowd`` masks are read too (CVAT writes its mask shapes
  as RLE with ``iscrowd: 1``). Image files are found by ``file_name`` under ``images_dir``, else
  next to the JSON, in ``images/`` beside it or beside its folder (CVAT's zip: ``annotations/`` +
  ``images/``).
* **Label Studio** JSON export (a list of tasks, each with ``data`` and ``annotations``):
  ``brushlabels`` regions (brush RLE, decoded by :func:`sqsam_core.formats.ls_rle_to_mask`) and
  ``polygonlabels`` regions (points in percent of the image). The task's latest annotation that
  was not cancelled is used; each region is one object. Images come from ``fetch(url)`` when
  given (the Label Studio backend passes its image loader), else from ``images_dir`` by the URL's
  file name (Label Studio's upload prefix ``<8 hex>-`` dropped when that finds nothing).

Masks are ``(H, W)`` bool arrays at the image's size, indexed ``[row, col]``. Objects with an
empty mask, or a mask whose size differs from its image's, and images that cannot be read are
skipped and listed in ``Annotations.skipped``; a source that yields no object at all raises
:class:`DatasetError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from sqsam_core.errors import InvalidImageError, SqsamError
from sqsam_core.evaluation import EvalObject, evaluate, mask_image_pairs, read_mask

_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")

#: what ``fetch`` returns for a Label Studio image URL: an ``(H, W, 3)`` uint8 RGB array.
ImageFetch = Callable[[str], np.ndarray]


class DatasetError(SqsamError):
    """The annotations cannot be read (unknown layout, malformed JSON, nothing usable)."""


@dataclass
class AnnotatedObject:
    """One object: ``mask`` (H, W) bool, ``ignore`` (H, W) bool or None (pixels left out of IoU)."""

    name: str
    mask: np.ndarray
    ignore: np.ndarray | None = None


@dataclass
class AnnotatedImage:
    """An image and its objects. ``load()`` returns the (H, W, 3) uint8 RGB image (read lazily)."""

    name: str
    source: Any  # a Path, an (H, W, 3) array, or a zero-argument callable returning one
    objects: list[AnnotatedObject] = field(default_factory=list)

    def load(self) -> np.ndarray:
        if isinstance(self.source, np.ndarray):
            return self.source
        if callable(self.source):
            return self.source()
        from sqsam_core.imageio import load_image

        return load_image(self.source)


@dataclass
class Annotations:
    """What a reader found: ``images`` with at least one object each, and ``skipped`` reasons."""

    kind: str  # "folder", "coco" or "label-studio"
    images: list[AnnotatedImage]
    skipped: list[str] = field(default_factory=list)

    @property
    def num_objects(self) -> int:
        return sum(len(image.objects) for image in self.images)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def detect_kind(source: str | Path) -> str:
    """``"folder"``, ``"coco"`` or ``"label-studio"`` for a path; raises :class:`DatasetError`."""
    path = Path(source)
    if path.is_dir():
        if (path / "images").is_dir() and (path / "masks").is_dir():
            return "folder"
        raise DatasetError(f"{path}: a data set folder must hold images/ and masks/")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file or directory")
    data = _read_json(path)
    return _json_kind(data, path)


def read_annotations(source: str | Path, images_dir: str | Path | None = None,
                     fetch: ImageFetch | None = None) -> Annotations:
    """Read a folder, a COCO JSON or a Label Studio JSON export (see the module docstring)."""
    path = Path(source)
    if path.is_dir():
        detect_kind(path)
        found = read_folder(path)
    else:
        if not path.is_file():
            raise DatasetError(f"{path}: no such file or directory")
        data = _read_json(path)
        kind = _json_kind(data, path)
        base = Path(images_dir) if images_dir is not None else None
        if kind == "coco":
            found = read_coco(data, path.parent, base)
        else:
            found = read_label_studio(data, fetch=fetch, images_dir=base or path.parent)
    if not found.images:
        reasons = "; ".join(found.skipped[:3])
        raise DatasetError(f"{path}: no usable annotated object" + (f" ({reasons})" if reasons else ""))
    return found


def _read_json(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable JSON file ({exc})") from None


def _json_kind(data: Any, path: Path) -> str:
    if isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list):
        return "coco"
    if isinstance(data, list) and all(isinstance(t, dict) and "data" in t for t in data):
        return "label-studio"
    raise DatasetError(f"{path}: neither a COCO instances JSON (images + annotations) nor a Label Studio "
                       f"JSON export (a list of tasks with data and annotations)")


# --------------------------------------------------------------------------------------------
# images/ + masks/ folder
# --------------------------------------------------------------------------------------------


def read_folder(root: Path) -> Annotations:
    """Images and masks of an ``images/`` + ``masks/`` folder, images in sorted order."""
    found: dict[str, AnnotatedImage] = {}
    skipped = []
    for mask_path, image_path in mask_image_pairs(root):
        if image_path is None:
            skipped.append(f"{mask_path.name}: no image of that name in images/")
            continue
        try:
            mask, ignore = read_mask(mask_path)
        except InvalidImageError as exc:
            raise DatasetError(str(exc)) from None
        if not mask.any():
            skipped.append(f"{mask_path.name}: empty mask")
            continue
        entry = found.setdefault(image_path.stem, AnnotatedImage(image_path.stem, image_path))
        entry.objects.append(AnnotatedObject(mask_path.stem, mask, ignore))
    return Annotations("folder", [found[k] for k in sorted(found)], skipped)


# --------------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------------


def coco_segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons ``[[x, y, ...], ...]`` in pixels, or an RLE dict) as (H, W) bool."""
    from pycocotools import mask as mask_utils

    from sqsam_core.formats import coco_rle_to_mask

    if isinstance(segmentation, dict):
        return coco_rle_to_mask(segmentation)
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in p)]
        if not polygons:
            return np.zeros((height, width), bool)
        rles = mask_utils.frPyObjects(polygons, height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    raise DatasetError("a COCO segmentation must be a list of polygons or an RLE dict")


def _coco_image_path(file_name: str, json_dir: Path, images_dir: Path | None) -> Path | None:
    name = Path(file_name)
    roots = [images_dir] if images_dir is not None else [json_dir, json_dir / "images", json_dir.parent / "images"]
    for root in roots:
        for candidate in (root / name, root / name.name):
            if candidate.is_file():
                return candidate
    return None


def read_coco(data: dict, json_dir: Path, images_dir: Path | None = None) -> Annotations:
    """Objects of a COCO instances dict; images by ``file_name`` (module docstring)."""
    by_image: dict[Any, list[dict]] = {}
    for ann in data["annotations"]:
        if isinstance(ann, dict) and "image_id" in ann:
            by_image.setdefault(ann["image_id"], []).append(ann)
    result, skipped = [], []
    for info in data["images"]:
        if not isinstance(info, dict) or info.get("id") not in by_image:
            continue
        file_name = str(info.get("file_name", ""))
        try:
            height, width = int(info["height"]), int(info["width"])
        except (KeyError, TypeError, ValueError):
            skipped.append(f"image {info.get('id')} ({file_name}): no width/height")
            continue
        path = _coco_image_path(file_name, json_dir, images_dir)
        if path is None:
            skipped.append(f"image {info.get('id')}: {file_name} not found")
            continue
        entry = AnnotatedImage(Path(file_name).stem, path)
        for ann in by_image[info["id"]]:
            what = f"annotation {ann.get('id')} of {file_name}"
            try:
                mask = coco_segmentation_to_mask(ann.get("segmentation"), height, width)
            except SqsamError as exc:
                skipped.append(f"{what}: {exc}")
                continue
            if mask.shape != (height, width):
                skipped.append(f"{what}: mask size {mask.shape[1]}x{mask.shape[0]} is not the image's")
            elif not mask.any():
                skipped.append(f"{what}: empty mask")
            else:
                entry.objects.append(AnnotatedObject(f"{entry.name}_{ann.get('id')}", mask))
        if entry.objects:
            result.append(entry)
    return Annotations("coco", result, skipped)


# --------------------------------------------------------------------------------------------
# Label Studio JSON export
# --------------------------------------------------------------------------------------------


def _latest_annotation(task: dict) -> dict | None:
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not annotations:
        return None
    return max(annotations, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))


def ls_region_to_mask(region: dict) -> np.ndarray | None:
    """A brush or polygon result region as an (H, W) bool mask; None for other region types."""
    from sqsam_core.formats import ls_rle_to_mask

    kind = str(region.get("type", "")).lower()
    value = region.get("value")
    if kind not in ("brushlabels", "polygonlabels", "brush", "polygon") or not isinstance(value, dict):
        return None
    try:
        height, width = int(region["original_height"]), int(region["original_width"])
    except (KeyError, TypeError, ValueError):
        raise DatasetError("the region has no original_width/original_height") from None
    if kind.startswith("brush"):
        if value.get("format", "rle") != "rle" or "rle" not in value:
            raise DatasetError("a brush region without an RLE")
        return ls_rle_to_mask(value["rle"], height, width)
    points = value.get("points")
    if not isinstance(points, list) or len(points) < 3:
        raise DatasetError("a polygon region needs at least 3 points")
    try:
        xy = np.array([[float(x) / 100.0 * width, float(y) / 100.0 * height] for x, y in points])
    except (TypeError, ValueError):
        raise DatasetError("polygon points must be [x, y] pairs in percent") from None
    if not np.isfinite(xy).all():
        raise DatasetError("polygon points must be finite numbers")
    mask = np.zeros((height, width), np.uint8)
    # percent edges -> pixel centres: Label Studio's points are on the pixel grid's corners
    cv2.fillPoly(mask, [np.round((xy - 0.5) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _file_in(images_dir: Path, url: str) -> Path | None:
    name = Path(url.split("?", 1)[0]).name
    for candidate in (name, _UPLOAD_PREFIX.sub("", name)):
        if candidate and (images_dir / candidate).is_file():
            return images_dir / candidate
    return None


def _task_image_url(task: dict) -> str | None:
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    for key in ("image", "img", "url"):
        if isinstance(data.get(key), str):
            return data[key]
    return next((v for v in data.values() if isinstance(v, str) and v), None)


def read_label_studio(tasks: list[dict], fetch: ImageFetch | None = None,
                      images_dir: Path | None = None) -> Annotations:
    """Objects of a Label Studio JSON export (module docstring). With ``fetch`` the images are
    read here (failures are skipped and reported); otherwise from ``images_dir``, lazily."""
    result, skipped = [], []
    for task in tasks:
        task_id = task.get("id")
        annotation = _latest_annotation(task)
        if annotation is None:
            continue
        url = _task_image_url(task)
        if url is None:
            skipped.append(f"task {task_id}: no image URL in data")
            continue
        objects = []
        for k, region in enumerate(annotation.get("result") or []):
            if not isinstance(region, dict):
                continue
            try:
                mask = ls_region_to_mask(region)
            except SqsamError as exc:
                skipped.append(f"task {task_id} region {region.get('id', k)}: {exc}")
                continue
            if mask is None:
                continue
            if not mask.any():
                skipped.append(f"task {task_id} region {region.get('id', k)}: empty mask")
                continue
            objects.append(AnnotatedObject(f"task{task_id}_{len(objects)}", mask))
        if not objects:
            continue
        if fetch is not None:
            try:
                source: Any = fetch(url)
            except Exception as exc:  # noqa: BLE001 - any fetch failure skips the task, with its reason
                skipped.append(f"task {task_id}: image not fetched: {exc}")
                continue
            size = source.shape[:2]
        else:
            source = _file_in(images_dir, url) if images_dir is not None else None
            if source is None:
                skipped.append(f"task {task_id}: image {url!r} not found in {images_dir}")
                continue
            size = None
        if size is not None:
            wrong = [o for o in objects if o.mask.shape != size]
            for o in wrong:
                skipped.append(f"task {task_id}: mask {o.mask.shape[1]}x{o.mask.shape[0]} is not the image's size")
            objects = [o for o in objects if o.mask.shape == size]
        if objects:
            result.append(AnnotatedImage(f"task{task_id}", source, objects))
    return Annotations("label-studio", result, skipped)


# --------------------------------------------------------------------------------------------
# Hold-out split and evaluation objects
# --------------------------------------------------------------------------------------------


def holdout_split(images: list[AnnotatedImage], fraction: float = 0.2,
                  min_holdout: int = 1) -> tuple[list[AnnotatedImage], list[AnnotatedImage]]:
    """``(train, held_out)`` by image: the ``ceil(fraction * n)`` images (at least ``min_holdout``,
    and always leaving one to train on) whose sha1 of the name is smallest are held out. The same
    names give the same split on every machine and in every order."""
    if len(images) < 2 or fraction <= 0:
        return list(images), []
    count = min(len(images) - 1, max(min_holdout, math.ceil(fraction * len(images))))
    ranked = sorted(images, key=lambda im: hashlib.sha1(im.name.encode()).hexdigest())
    held = {id(im) for im in ranked[:count]}
    return [im for im in images if id(im) not in held], [im for im in images if id(im) in held]


def iter_eval_objects(images: list[AnnotatedImage]) -> Iterator:
    """:class:`sqsam_core.evaluation.EvalObject` per object, each image loaded once."""
    for entry in images:
        rgb = entry.load()
        for obj in entry.objects:
            if obj.mask.shape != rgb.shape[:2]:
                continue
            yield EvalObject(obj.name, rgb, obj.mask, obj.ignore)


def evaluate_annotations(model, annotations, max_clicks: int = 20, limit: int | None = None,
                         zero_click: bool = True, progress: bool = True) -> dict:
    """:func:`sqsam_core.evaluation.evaluate` on :class:`Annotations` (a COCO JSON, a Label Studio export,
    a folder read by :func:`read_annotations`), objects in reading order."""
    total = annotations.num_objects if limit is None else min(limit, annotations.num_objects)
    report = evaluate(model, islice(iter_eval_objects(annotations.images), total), max_clicks, zero_click,
                      progress, total)
    report["dataset"] = annotations.kind
    report["skipped"] = annotations.skipped
    report["model_version"] = model.spec.model_version
    return report
