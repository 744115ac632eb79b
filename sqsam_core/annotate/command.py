"""``sqsam annotate``: pre-annotate image sets (auto-masks, or one mask per box) in bulk.

    sqsam annotate INPUT... --out OUT [--format coco|label-studio|png]
        [--boxes FILE] [--max-objects N] [--min-score S] [--polygons]
        [--workers N] [--dask local|tcp://HOST:PORT] [--resume]

Exit codes: 0 every image done; 1 some images or boxes failed (listed one per line at the end,
the others written); 2 bad usage (one line ``sqsam: error: ...``); 130 interrupted (finished
images are kept: rerun with ``--resume``).

:func:`annotate` is the same run as a function (used by ``sqsam bench-annotate``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from sqsam_core.annotate import inputs as inputs_mod
from sqsam_core.annotate import runner, writers
from sqsam_core.annotate.inputs import InputError
from sqsam_core.annotate.progress import Progress
from sqsam_core.annotate.shards import ShardStore, fingerprint, write_file_atomic
from sqsam_core.annotate.work import FORMATS, AnnotateSettings

EXIT_FAILED = 1


@dataclass
class Summary:
    """What a run did: images written, objects, failures ``(name, reason)`` in image order."""

    out: Path
    images: int = 0
    objects: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    processed: int = 0  # images annotated by this run (not the resumed ones)
    skipped_inputs: int = 0  # INPUT images that the box file does not mention
    parts: Path | None = None  # the parts folder, kept when something failed


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def parts_folder(out: Path, fmt: str) -> Path:
    return out / ".parts" if fmt == "png" else out.with_name(out.name + ".parts")


def _model_id(model_path: str | None) -> str:
    """sha256 of the model file (what resume checks; no model is loaded in this process)."""
    from sqsam_core.predictor import default_model_path

    path = Path(model_path) if model_path else default_model_path()
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fp:
            for chunk in iter(lambda: fp.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(f"--model {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def _check_out(out: Path, fmt: str) -> None:
    if fmt == "png":
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out}: --format png writes a folder, and this is a file")
        return
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder; --format {fmt} writes one JSON file")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")


def _prepare_jobs(inputs: list[str], boxes: str | None, fmt: str, label: str):
    """``(jobs, categories, skipped INPUT images)``; Label Studio boxes get COCO category ids
    from their labels (sorted) when writing COCO."""
    if boxes is None:
        return inputs_mod.image_jobs(inputs), [{"id": 1, "name": label}], 0
    box_file = inputs_mod.read_box_file(boxes, inputs)
    categories = box_file.categories
    all_boxes = [b for job in box_file.jobs for b in job.boxes or []]
    if box_file.kind == "label-studio":
        names = sorted({(b.keep["labels"] or [label])[0] for b in all_boxes})
        ids = {name: n for n, name in enumerate(names, start=1)}
        for b in all_boxes:
            b.keep["category_id"] = ids[(b.keep["labels"] or [label])[0]]
        categories = [{"id": i, "name": name} for name, i in ids.items()]
    elif any(b.keep.get("category_id") is None for b in all_boxes) and not any(c["id"] == 1 for c in categories):
        categories = categories + [{"id": 1, "name": label}]
    return box_file.jobs, categories, box_file.unused_inputs


def annotate(inputs: list[str], out: str | os.PathLike, fmt: str = "coco", boxes: str | None = None,
             settings: AnnotateSettings | None = None, workers: int | None = None, dask: str | None = None,
             resume: bool = False, ls_document_root: str | None = None,
             ls_url_prefix: str = writers.LS_LOCAL_FILES_PREFIX, progress_stream: TextIO | None = None,
             progress_interval: float = 10.0, keep_parts: bool = False) -> Summary:
    """Annotate ``inputs`` into ``out`` (see the module docstring). Raises :class:`InputError` for
    usage problems before any image is processed."""
    started = time.monotonic()
    out = Path(out)
    settings = replace(settings or AnnotateSettings(), format=fmt)
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    workers = workers or default_workers()
    if dask is not None:
        if dask != "local" and not dask.startswith(("tcp://", "tls://", "inproc://", "ws://", "wss://")):
            raise InputError(f"--dask {dask!r}: give 'local' or a scheduler address such as tcp://HOST:8786")
        runner.import_distributed()
    _check_out(out, fmt)
    jobs, categories, skipped = _prepare_jobs(inputs, boxes, fmt, settings.label)
    if fmt == "label-studio":
        settings = _with_category_names(settings, categories)
        for job in jobs:
            if "data" not in job.source and not job.error:
                writers.image_url(job.path, ls_document_root, ls_url_prefix)  # fail early if outside the root
    parts = parts_folder(out, fmt)
    if fmt == "png":
        out.mkdir(parents=True, exist_ok=True)
    run_id = fingerprint(jobs, settings, _model_id(settings.model_path))
    store = ShardStore(parts, run_id, resume)
    summary = Summary(out, skipped_inputs=skipped)
    done_before = store.done()
    todo = [job for job in jobs if job.index not in done_before]
    progress = Progress(len(jobs), len(jobs) - len(todo), progress_stream, progress_interval)

    def on_result(record: dict, files: list) -> None:
        for name, data in files:
            write_file_atomic(out / name, data)
        store.append(record)
        summary.processed += 1
        progress.update(failed=bool(record.get("failed") or record.get("failures")))

    try:
        if not todo:
            pass
        elif dask is not None:
            runner.run_dask(todo, settings, dask, workers, on_result, run_id[:12])
        elif workers == 1 or len(todo) == 1:
            runner.run_inline(todo, settings, on_result)
        else:
            runner.run_processes(todo, settings, min(workers, len(todo)), on_result)
    finally:
        progress.close()
        store.close()

    entries = store.entries
    done = [job.index for job in jobs if job.index in entries and entries[job.index].failed is None]
    for job in jobs:
        entry = entries[job.index]
        if entry.failed is not None:
            summary.failures.append((job.key, entry.failed))
        summary.failures += [(f"{job.key} {f['ref']}", f["reason"]) for f in entry.failures]
    versions = _model_versions(store, done)
    model_version = versions[0] if versions else None
    if len(versions) > 1:
        raise InputError(f"workers ran different models ({', '.join(versions)}): install one sqsam on every "
                         f"worker, remove {parts} and run again")
    if fmt == "coco":
        writers.write_coco(out, store, jobs, done, categories, model_version)
    elif fmt == "label-studio":
        writers.write_label_studio(out, store, jobs, done, model_version, ls_document_root, ls_url_prefix)
    else:
        writers.write_png_index(out, store, jobs, done, model_version)
    summary.images = len(done)
    summary.objects = sum(store.entries[i].objects for i in done)
    summary.seconds = time.monotonic() - started
    if summary.failures or keep_parts:
        summary.parts = parts
    else:
        store.remove()
    return summary


def _with_category_names(settings: AnnotateSettings, categories: list[dict]) -> AnnotateSettings:
    names = tuple((c["id"], str(c.get("name", c["id"]))) for c in categories)
    return replace(settings, category_names=names)


def _model_versions(store: ShardStore, done: list[int]) -> list[str]:
    return sorted({store.entries[i].model_version for i in done} - {None})


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def cmd_annotate(args) -> int:
    settings = AnnotateSettings(
        format=args.format, max_objects=args.max_objects, min_score=args.min_score, polygons=args.polygons,
        label=args.label, from_name=args.from_name, to_name=args.to_name, model_path=args.model,
        max_pixels=args.max_pixels, threads=args.threads)
    try:
        summary = annotate(args.inputs, args.out, args.format, args.boxes, settings, args.workers, args.dask,
                           args.resume, args.ls_document_root, args.ls_url_prefix,
                           progress_interval=args.progress_every)
    except RuntimeError as exc:  # a worker process died: what finished is in the parts folder
        print(f"sqsam: error: {' '.join(str(exc).split())}; finished images are kept, rerun with --resume",
              file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("sqsam: interrupted; finished images are kept, rerun with --resume to continue", file=sys.stderr)
        return 130
    rate = summary.processed / summary.seconds if summary.seconds > 0 else 0.0
    skipped = (f"; {summary.skipped_inputs} INPUT image(s) not in --boxes, skipped"
               if summary.skipped_inputs else "")
    print(f"{summary.out}: {summary.images} image(s), {summary.objects} object(s) "
          f"({summary.processed} annotated in {summary.seconds:.1f} s, {rate:.2f} images/s){skipped}",
          file=sys.stderr)
    if not summary.failures:
        return 0
    print(f"sqsam: {len(summary.failures)} failed (the rest is written; after fixing them, rerun with "
          f"--resume to redo only the failed images, kept in {summary.parts}):", file=sys.stderr)
    for name, reason in summary.failures:
        print(f"  {name}: {' '.join(str(reason).split())}", file=sys.stderr)
    return EXIT_FAILED


def register_commands(subparsers) -> None:
    """Add ``sqsam annotate`` (the ``sqsam.commands`` entry point ``annotate``)."""
    from sqsam_core.argtypes import positive_int, probability
    from sqsam_core.imageio import DEFAULT_MAX_PIXELS

    p = subparsers.add_parser(
        "annotate",
        help="pre-annotate image sets in bulk: auto-masks, or boxes to masks (local processes or Dask)",
        description="Segment every image of INPUT (files, folders searched recursively, globs): its salient "
                    "objects, or one mask per box of --boxes (a COCO detection JSON, or a Label Studio export "
                    "with RectangleLabels). Results are appended to OUT.parts/ as they come; the final OUT is "
                    "written at the end in image order; --resume continues a killed run. See docs/scaling.md.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or glob patterns")
    p.add_argument("--out", required=True, metavar="OUT",
                   help="output file (coco, label-studio) or folder (png)")
    p.add_argument("--format", choices=FORMATS, default="coco",
                   help="coco: COCO instances JSON; label-studio: tasks JSON with predictions; "
                        "png: a mask PNG per object and index.json (default coco)")
    p.add_argument("--boxes", metavar="FILE",
                   help="one mask per box: COCO detection JSON (ids and categories kept) or Label Studio JSON "
                        "export (RectangleLabels; labels kept)")
    p.add_argument("--max-objects", type=positive_int, default=5, metavar="N",
                   help="auto-masks: at most N objects per image (default 5)")
    p.add_argument("--min-score", type=probability, default=None, metavar="S",
                   help="drop masks whose predicted IoU is under S (auto-masks: default 0.5; boxes: default keep all)")
    p.add_argument("--polygons", action="store_true",
                   help="polygons instead of masks: Label Studio PolygonLabels, COCO polygon segmentation")
    p.add_argument("--label", default="Object",
                   help="label of auto-masks (Label Studio) and their COCO category name (default Object)")
    p.add_argument("--from-name", default=None, metavar="NAME",
                   help="Label Studio control name of the regions (default: mask, or outline with --polygons)")
    p.add_argument("--to-name", default="image", metavar="NAME",
                   help="Label Studio image object name (default image; Label Studio boxes keep theirs)")
    p.add_argument("--ls-document-root", metavar="DIR", default=None,
                   help="label-studio: image URLs are paths relative to DIR, Label Studio's "
                        "LOCAL_FILES_DOCUMENT_ROOT (default /)")
    p.add_argument("--ls-url-prefix", metavar="URL", default=writers.LS_LOCAL_FILES_PREFIX,
                   help=f"label-studio: what image URLs start with (default {writers.LS_LOCAL_FILES_PREFIX}; "
                        f"e.g. https://host/images/)")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="worker processes, one model and one ONNX thread each (default: number of cores)")
    p.add_argument("--dask", metavar="local|tcp://HOST:PORT", default=None,
                   help='run on Dask: a LocalCluster of --workers processes, or a running scheduler '
                        '(needs pip install "sqsam[dask]")')
    p.add_argument("--resume", action="store_true", help="continue an interrupted run into the same OUT")
    p.add_argument("--model", metavar="PATH", default=None,
                   help="ONNX model file (default: the bundled model, or $SQSAM_MODEL)")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N",
                   help="ONNX Runtime threads per worker (default 1)")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"fail images over N pixels (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                   help="when stderr is not a terminal: a progress line every SECONDS (default 10)")
    p.set_defaults(func=cmd_annotate)
