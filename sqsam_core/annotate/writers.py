"""Final outputs of ``sqsam annotate``, streamed from the shards in image order.

Each writer reads one record at a time (:meth:`ShardStore.records`), writes to ``OUT.tmp`` and
moves it over ``OUT`` with ``os.replace`` once complete, so ``OUT`` is either the previous file
or the whole new one. The bytes depend only on the records and the jobs (sorted by ``index``,
ids fixed by the input or counted in that order, no timestamps): an interrupted and resumed run
writes the same file as an uninterrupted one.

* ``coco``: COCO instances JSON (``images``, ``annotations`` with RLE ``segmentation`` or, with
  ``--polygons``, polygons; ``bbox = [x, y, w, h]`` pixels; ``area``; ``score``; ``iscrowd``;
  ``categories``). Auto-masks: image ids ``index + 1``, annotation ids counted from 1, category
  1. Boxes from a COCO file keep their image ``id`` / ``file_name``, annotation ``id`` and
  ``category_id``.
* ``label-studio``: a JSON list of tasks ``{"data": {...}, "predictions": [{"model_version",
  "score", "result"}]}`` that Label Studio's import takes as it is; ``data`` is the source
  task's, or ``{"image": URL}`` (see :func:`image_url`).
* ``png``: ``OUT/<image key minus suffix>_NN.png`` per object (written during the run) and
  ``OUT/index.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, TextIO
from urllib.parse import quote

from sqsam_core.annotate.inputs import ImageJob, InputError

#: Label Studio serves files below LOCAL_FILES_DOCUMENT_ROOT under this URL.
LS_LOCAL_FILES_PREFIX = "/data/local-files/?d="


def image_url(path: str, document_root: str | None, prefix: str = LS_LOCAL_FILES_PREFIX) -> str:
    """The URL a Label Studio task uses for the image at ``path``.

    ``prefix`` + the path relative to ``document_root`` (quoted, ``/`` kept). The default prefix
    is Label Studio's local-files URL: set ``LOCAL_FILES_SERVING_ENABLED=true`` and
    ``LOCAL_FILES_DOCUMENT_ROOT=document_root`` there and add a Local Files storage whose path
    holds the images. ``document_root`` None: ``/`` (Label Studio's default document root).
    Raises :class:`InputError` when ``path`` is not below ``document_root``.
    """
    root = Path(document_root or os.sep).resolve()
    full = Path(path).resolve()
    try:
        relative = full.relative_to(root)
    except ValueError:
        raise InputError(f"{path} is not inside --ls-document-root {root}") from None
    return prefix + quote(relative.as_posix(), safe="/")


def _dump(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _write_stream(out: Path, write: Callable[[TextIO], None]) -> None:
    """Run ``write`` on ``OUT.tmp`` and move it over ``OUT`` once it is complete."""
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fp:
        write(fp)
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(tmp, out)


def _items(fp: TextIO, items: Iterable[str], indent: str = "") -> None:
    first = True
    for item in items:
        fp.write(("\n" if first else ",\n") + indent + item)
        first = False
    if not first:
        fp.write("\n")


def write_coco(out: Path, store, jobs: list[ImageJob], done: list[int], categories: list[dict],
               model_version: str | None) -> None:
    """COCO instances JSON of the ``done`` image indices (in order)."""
    def image_entry(index: int) -> dict:
        job, entry = jobs[index], store.entries[index]
        source = job.source.get("image") or {}
        return {"id": source.get("id", index + 1), "file_name": source.get("file_name", job.key),
                "width": entry.width, "height": entry.height}

    def annotations():
        counter = 0
        for record in store.records(done):
            image_id = image_entry(record["index"])["id"]
            for obj in record["objects"]:
                counter += 1
                ann = {"id": obj.get("id", counter), "image_id": image_id,
                       "category_id": obj.get("category_id") if obj.get("category_id") is not None else 1,
                       "segmentation": obj["segmentation"], "area": obj["area"], "bbox": obj["bbox"],
                       "iscrowd": 0, "score": obj["score"]}
                if "prompt_bbox" in obj:
                    ann["prompt_bbox"] = obj["prompt_bbox"]
                yield _dump(ann)

    def write(fp: TextIO) -> None:
        fp.write('{"info":' + _dump({"description": "sqsam annotate", "model_version": model_version}))
        fp.write(',\n"images":[')
        _items(fp, (_dump(image_entry(i)) for i in done))
        fp.write('],\n"annotations":[')
        _items(fp, annotations())
        fp.write('],\n"categories":' + _dump(categories) + "}\n")

    _write_stream(out, write)


def write_label_studio(out: Path, store, jobs: list[ImageJob], done: list[int], model_version: str | None,
                       document_root: str | None, url_prefix: str) -> None:
    """Label Studio tasks JSON with one prediction per image."""
    def tasks():
        for record in store.records(done):
            job = jobs[record["index"]]
            data = job.source.get("data") or {"image": image_url(job.path, document_root, url_prefix)}
            objects = record["objects"]
            score = round(sum(o["score"] for o in objects) / len(objects), 4) if objects else 0.0
            result = [region for o in objects for region in o["result"]]
            yield _dump({"data": data, "predictions": [
                {"model_version": model_version, "score": score, "result": result}]})

    def write(fp: TextIO) -> None:
        fp.write("[")
        _items(fp, tasks())
        fp.write("]\n")

    _write_stream(out, write)


def write_png_index(out_dir: Path, store, jobs: list[ImageJob], done: list[int], model_version: str | None) -> None:
    """``OUT/index.json``: per image its key, size and objects (mask file, score, area, bbox, box ids)."""
    def images():
        for record in store.records(done):
            yield _dump({"file": record["key"], "width": record["width"], "height": record["height"],
                         "objects": record["objects"]})

    def write(fp: TextIO) -> None:
        fp.write('{"model_version":' + _dump(model_version) + ',\n"images":[')
        _items(fp, images())
        fp.write("]}\n")

    _write_stream(out_dir / "index.json", write)
