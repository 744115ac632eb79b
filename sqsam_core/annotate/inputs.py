"""What ``sqsam annotate`` works on: image paths (files, folders, globs) and box files.

Every unit of work is an :class:`ImageJob`: one image, its position ``index`` in the run
(the stable key every output is sorted by), the name it gets in the outputs (``key``) and, for
box-to-mask runs, its :class:`BoxPrompt` list.

Box files:

* **COCO detection JSON**: ``images`` (``id``, ``file_name``, optional ``width`` / ``height``)
  and ``annotations`` (``id``, ``image_id``, ``category_id``, ``bbox = [x, y, w, h]`` in pixels,
  ``x`` = column of the left edge). ``categories`` are copied to the output.
* **Label Studio JSON export**: a list of tasks whose ``annotations`` (or, for tasks without
  annotations, ``predictions``) hold ``rectanglelabels`` results in percent of the image
  (``x``, ``y``, ``width``, ``height``, ``rotation`` in degrees about the top-left corner).

Box coordinates stay as given (pixels or percent) until the image is decoded; :func:`box_to_pixels`
then turns them into the inclusive pixel box ``(x0, y0, x1, y1)`` the model takes (a box
``[x, x + w)`` covers pixel columns ``x .. x + w - 1``). A malformed box file is a usage error; a
box that makes no sense for its image (NaN, zero size, outside the image) fails alone at run time.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable
from urllib.parse import parse_qs, unquote, urlparse

from sqsam_core.errors import SqsamError

#: File suffixes a folder is searched for (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_GLOB_CHARS = re.compile(r"[*?\[]")
#: Label Studio prefixes uploaded files with 8 hex digits and a dash.
_LS_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")


class InputError(SqsamError):
    """A problem with INPUT or ``--boxes`` that the user has to fix (exit code 2)."""


@dataclass(frozen=True)
class BoxPrompt:
    """One box to turn into a mask.

    ``coords``: ``(x, y, w, h)``; pixels (``unit = "px"``, COCO) or percent of the image
    (``unit = "%"``, Label Studio), ``x`` = column. ``rotation``: degrees, clockwise about
    ``(x, y)`` (Label Studio). ``ref``: how failures name it. ``keep``: fields copied to the
    output object (COCO ``id`` / ``category_id``, Label Studio ``label`` / ``to_name`` ...).
    """

    coords: tuple[Any, Any, Any, Any]
    unit: str
    ref: str
    keep: dict = field(default_factory=dict)
    rotation: Any = 0.0


@dataclass
class ImageJob:
    """One image to annotate: ``path`` on disk, ``key`` (its name in the outputs, POSIX),
    ``index`` (0-based position; outputs are sorted by it), ``boxes`` (None = auto-masks),
    ``source``: what the output keeps from the input (COCO image entry, Label Studio task data)."""

    index: int
    key: str
    path: str
    boxes: list[BoxPrompt] | None = None
    source: dict = field(default_factory=dict)
    error: str | None = None  # set when the job cannot run (e.g. its image was not found)

    def describe(self) -> dict:
        """What identifies this job for resume (see :func:`sqsam_core.annotate.shards.fingerprint`)."""
        return {"key": self.key, "path": self.path, "source": self.source, "error": self.error,
                "boxes": None if self.boxes is None else [
                    [list(map(repr, b.coords)), b.unit, repr(b.rotation), b.ref, b.keep] for b in self.boxes]}


@dataclass
class BoxFile:
    """A parsed ``--boxes`` file: its ``kind`` (``"coco"`` or ``"label-studio"``), the jobs, the
    COCO categories (``[]`` for Label Studio) and images of INPUT that it does not mention."""

    kind: str
    jobs: list[ImageJob]
    categories: list[dict]
    unused_inputs: int


# --------------------------------------------------------------------------------------------
# INPUT: files, folders, globs
# --------------------------------------------------------------------------------------------


def collect_images(inputs: Iterable[str]) -> list[tuple[str, str]]:
    """Resolve INPUT arguments to ``(key, path)`` pairs, sorted by key, without duplicates.

    A file is taken as it is (whatever its suffix: a corrupt file is reported when it is read);
    a folder is searched recursively for :data:`IMAGE_SUFFIXES`, its images keyed by their path
    relative to it; a glob (``*``, ``?``, ``[``; ``**`` recursive) matches files. A file's key is
    its name; the key of a folder's image is its relative path (``sub/x.jpg``). Raises
    :class:`InputError` when an argument matches nothing or two images would get one key.
    """
    found: dict[str, str] = {}
    seen_paths: set[str] = set()

    def add(key: str, path: Path) -> None:
        real = os.path.abspath(path)
        if real in seen_paths:  # the same path given twice (links to one file stay separate)
            return
        if key in found:
            raise InputError(f"two input images would both be named {key!r} in the output "
                             f"({found[key]} and {path}); give their common parent folder instead")
        seen_paths.add(real)
        found[key] = str(path)

    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:
                raise InputError(f"{arg}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            for image in images:
                add(image.relative_to(path).as_posix(), image)
        elif path.is_file():
            add(path.name, path)
        elif _GLOB_CHARS.search(arg):
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True) if Path(m).is_file())
            if not matches:
                raise InputError(f"{arg}: no file matches this pattern")
            for match in matches:
                add(match.name, match)
        else:
            raise InputError(f"{arg}: no such file or folder")
    return sorted(found.items())


def image_jobs(inputs: Iterable[str]) -> list[ImageJob]:
    """Auto-mask jobs: every image of INPUT, in key order."""
    return [ImageJob(i, key, path) for i, (key, path) in enumerate(collect_images(inputs))]


class _Matcher:
    """Finds the INPUT image a box file names: by its relative path's trailing parts, else by name."""

    def __init__(self, images: list[tuple[str, str]]):
        self.by_key = dict(images)
        self.by_name: dict[str, list[str]] = {}
        for key, _ in images:
            self.by_name.setdefault(PurePosixPath(key).name, []).append(key)
        self.used: set[str] = set()

    def find(self, name: str) -> tuple[str | None, str | None]:
        """``(key, None)`` when found, else ``(None, reason)``."""
        parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("/", ".")]
        if not parts:
            return None, f"image name {name!r} is empty"
        for start in range(len(parts)):
            candidate = "/".join(parts[start:])
            if candidate in self.by_key:
                self.used.add(candidate)
                return candidate, None
        options = self.by_name.get(parts[-1], [])
        if len(options) > 1:
            return None, f"{len(options)} input images are named {parts[-1]!r}; give paths that tell them apart"
        if options:
            self.used.add(options[0])
            return options[0], None
        return None, f"image {name!r} is not among INPUT"


# --------------------------------------------------------------------------------------------
# --boxes
# --------------------------------------------------------------------------------------------


def read_box_file(path: str | os.PathLike, inputs: Iterable[str]) -> BoxFile:
    """Parse ``--boxes`` (COCO detection JSON or a Label Studio export) against INPUT's images."""
    try:
        with open(path, "rb") as fp:
            data = json.load(fp)
    except FileNotFoundError:
        raise InputError(f"--boxes {path}: no such file") from None
    except OSError as exc:
        raise InputError(f"--boxes {path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"--boxes {path}: not valid JSON ({exc})") from None
    images = collect_images(inputs)
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        return _read_coco(data, images, str(path))
    if isinstance(data, list) or (isinstance(data, dict) and "data" in data):
        return _read_label_studio(data if isinstance(data, list) else [data], images, str(path))
    raise InputError(f"--boxes {path}: neither a COCO detection JSON (images + annotations) "
                     f"nor a Label Studio JSON export (a list of tasks)")


def _read_coco(data: dict, images: list[tuple[str, str]], where: str) -> BoxFile:
    entries, annotations = data.get("images"), data.get("annotations")
    if not isinstance(entries, list) or not isinstance(annotations, list):
        raise InputError(f"--boxes {where}: COCO 'images' and 'annotations' must be lists")
    categories = data.get("categories") or []
    if not isinstance(categories, list) or not all(isinstance(c, dict) and "id" in c for c in categories):
        raise InputError(f"--boxes {where}: COCO 'categories' must be a list of objects with an 'id'")
    by_id: dict[Any, dict] = {}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("file_name"), str):
            raise InputError(f"--boxes {where}: images[{n}] needs an 'id' and a 'file_name'")
        if entry["id"] in by_id:
            raise InputError(f"--boxes {where}: image id {entry['id']!r} appears twice")
        by_id[entry["id"]] = entry
    boxes: dict[Any, list[BoxPrompt]] = {image_id: [] for image_id in by_id}
    seen_ids: set = set()
    for n, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "image_id" not in ann or "id" not in ann:
            raise InputError(f"--boxes {where}: annotations[{n}] needs an 'id' and an 'image_id'")
        if ann["id"] in seen_ids:
            raise InputError(f"--boxes {where}: annotation id {ann['id']!r} appears twice")
        seen_ids.add(ann["id"])
        if ann["image_id"] not in by_id:
            raise InputError(f"--boxes {where}: annotation {ann['id']!r} refers to image {ann['image_id']!r}, "
                             f"which 'images' does not list")
        bbox = ann.get("bbox")
        coords = tuple(bbox) if isinstance(bbox, (list, tuple)) and len(bbox) == 4 else (bbox, None, None, None)
        keep = {"id": ann["id"], "category_id": ann.get("category_id"), "bbox": bbox}
        boxes[ann["image_id"]].append(BoxPrompt(coords, "px", f"box {ann['id']}", keep))
    matcher = _Matcher(images)
    jobs = []
    for index, (image_id, entry) in enumerate(sorted(by_id.items(), key=lambda item: _sort_id(item[0]))):
        key, reason = matcher.find(entry["file_name"])
        job = ImageJob(index, key or entry["file_name"], matcher.by_key.get(key, ""), boxes[image_id],
                       source={"image": {k: entry[k] for k in ("id", "file_name", "width", "height") if k in entry}},
                       error=reason)
        jobs.append(job)
    if not categories:
        ids = sorted({b.keep["category_id"] for job in jobs for b in job.boxes or []
                      if b.keep["category_id"] is not None}, key=_sort_id)
        categories = [{"id": c, "name": str(c)} for c in ids]
    return BoxFile("coco", jobs, categories, len(images) - len(matcher.used))


def _sort_id(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _task_image(task: dict) -> tuple[str | None, str | None]:
    """``(data key, URL)`` of a task's image: ``data["image"]``, else its only string value."""
    data = task.get("data")
    if not isinstance(data, dict):
        return None, None
    if isinstance(data.get("image"), str):
        return "image", data["image"]
    strings = [(k, v) for k, v in data.items() if isinstance(v, str)]
    return strings[0] if len(strings) == 1 else (None, None)


def url_file_name(url: str) -> str:
    """The file a Label Studio image URL points at: local-files ``?d=`` path, upload name (its
    8-hex prefix dropped) or the URL's last path part."""
    parsed = urlparse(url)
    if "d" in parse_qs(parsed.query):
        return unquote(parse_qs(parsed.query)["d"][0])
    name = unquote(PurePosixPath(parsed.path).name)
    if parsed.path.startswith("/data/upload/"):
        match = _LS_UPLOAD_PREFIX.match(name)
        if match:
            return match.group(1)
    return name


def _ls_rectangles(task: dict) -> list[dict]:
    """The rectangle results of a task's annotations (not cancelled), else of its predictions."""
    for group in ("annotations", "predictions"):
        found = []
        for item in task.get(group) or []:
            if not isinstance(item, dict) or item.get("was_cancelled"):
                continue
            found += [r for r in item.get("result") or [] if isinstance(r, dict) and r.get("type") == "rectanglelabels"]
        if found:
            return found
    return []


def _read_label_studio(tasks: list, images: list[tuple[str, str]], where: str) -> BoxFile:
    matcher = _Matcher(images)
    jobs = []
    for index, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise InputError(f"--boxes {where}: task {index} is not a JSON object")
        data_key, url = _task_image(task)
        if url is None:
            raise InputError(f"--boxes {where}: task {task.get('id', index)!r} has no 'data.image' "
                             f"(or single string field) naming its image")
        task_ref = f"task {task.get('id', index)}"
        boxes = []
        for n, region in enumerate(_ls_rectangles(task)):
            value = region.get("value") if isinstance(region.get("value"), dict) else {}
            labels = value.get("rectanglelabels") or value.get("labels") or []
            keep = {"labels": [str(v) for v in labels] if isinstance(labels, list) else [str(labels)],
                    "to_name": str(region.get("to_name") or "image"),
                    "region": str(region.get("id", n))}
            coords = tuple(value.get(k) for k in ("x", "y", "width", "height"))
            boxes.append(BoxPrompt(coords, "%", f"{task_ref} region {keep['region']}", keep,
                                   value.get("rotation", 0.0) or 0.0))
        key, reason = matcher.find(url_file_name(url))
        source = {"data": task["data"], "data_key": data_key, "task_id": task.get("id")}
        jobs.append(ImageJob(index, key or url_file_name(url), matcher.by_key.get(key, ""), boxes, source, reason))
    return BoxFile("label-studio", jobs, [], len(images) - len(matcher.used))


# --------------------------------------------------------------------------------------------
# Box geometry
# --------------------------------------------------------------------------------------------


def box_to_pixels(box: BoxPrompt, width: int, height: int) -> tuple[float, float, float, float]:
    """The inclusive pixel box ``(x0, y0, x1, y1)`` (x = column) of ``box`` on a ``width x height``
    image, clipped to it. Raises :class:`ValueError` (its message is the failure reason) when the
    box is malformed, empty or entirely outside the image."""
    try:
        x, y, w, h = (float(v) for v in box.coords)
        rotation = float(box.rotation)
    except (TypeError, ValueError):
        raise ValueError(f"bbox must be four numbers, got {list(box.coords)!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h, rotation)):
        raise ValueError(f"bbox has a non-finite value: {list(box.coords)!r}")
    if box.unit == "%":
        x, w = x * width / 100.0, w * width / 100.0
        y, h = y * height / 100.0, h * height / 100.0
    if w <= 0 or h <= 0:
        raise ValueError(f"bbox has zero or negative size ({w:g} x {h:g} px)")
    if rotation % 360:
        # Label Studio rotates about the top-left corner; use the rotated rectangle's bounding box.
        theta = math.radians(rotation)
        cos, sin = math.cos(theta), math.sin(theta)
        xs = [x + dx * cos - dy * sin for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
        ys = [y + dx * sin + dy * cos for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
        x, y, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    x0, y0, x1, y1 = x, y, x + w, y + h
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise ValueError(f"bbox ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {width}x{height} image")
    x0, y0 = max(0.0, x0), max(0.0, y0)
    x1, y1 = min(float(width), x1) - 1.0, min(float(height), y1) - 1.0
    return x0, y0, max(x0, x1), max(y0, y1)
