"""The ``sqsam`` command line.

    sqsam predict IMAGE --click X,Y [--click X,Y,-] [--box X0,Y0,X1,Y1] --out mask.png [--overlay overlay.png] [--json]
    sqsam automask IMAGE --out-dir DIR [--max-objects N]
    sqsam eval DATASET_DIR [--max-clicks 20] [--json out.json] [--plot curve.png] [--limit N]

Exit codes: 0 success; 2 bad input (argument errors, unreadable images, bad clicks, a missing
or corrupt model file; always one line ``sqsam: error: ...`` on stderr, never a traceback);
130 interrupted; 1 when a command's module fails to load (a bug, reported on one line).

Other modules add subcommands through the ``sqsam.commands`` entry points (pyproject.toml),
found by :mod:`sqsam_core.commands`; a command whose optional extra is not installed still shows
and says what to install.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from sqsam_core import __version__
from sqsam_core.argtypes import positive_int
from sqsam_core.argtypes import probability as _probability
from sqsam_core.commands import CommandLoadError, missing_extra_hint, missing_package, register_commands
from sqsam_core.contract import GRANULARITIES
from sqsam_core.errors import CliError, InvalidPromptError, SqsamError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# --------------------------------------------------------------------------------------------
# Argument values
# --------------------------------------------------------------------------------------------

_SIGNS = {"+": True, "pos": True, "p": True, "1": True, "-": False, "neg": False, "n": False, "0": False}


def parse_click(text: str) -> tuple[float, float, bool]:
    """``"X,Y"``, ``"X,Y,+"`` (positive) or ``"X,Y,-"`` (negative) -> ``(x, y, positive)``."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise InvalidPromptError(f"--click {text!r}: expected X,Y or X,Y,+ or X,Y,- (pixels, X = column)")
    x, y = _finite_numbers(parts[:2], f"--click {text!r}")
    positive = True
    if len(parts) == 3:
        sign = parts[2].lower()
        if sign not in _SIGNS:
            raise InvalidPromptError(f"--click {text!r}: the third field must be + or -, got {parts[2]!r}")
        positive = _SIGNS[sign]
    return x, y, positive


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"X0,Y0,X1,Y1"`` in pixels -> a box tuple."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise InvalidPromptError(f"--box {text!r}: expected X0,Y0,X1,Y1 (pixels)")
    x0, y0, x1, y1 = _finite_numbers(parts, f"--box {text!r}")
    return x0, y0, x1, y1


def _finite_numbers(parts: Sequence[str], what: str) -> list[float]:
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise InvalidPromptError(f"{what}: {part!r} is not a number") from None
        if not math.isfinite(value):
            raise InvalidPromptError(f"{what}: coordinates must be finite numbers, got {part!r}")
        values.append(value)
    return values


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _load_model(args):
    from sqsam_core.edges import EdgeRefine
    from sqsam_core.predictor import SqueezeSAM, ZoomIn

    return SqueezeSAM(args.model, threads=args.threads,
                      zoom_in=None if getattr(args, "no_zoom", False) else ZoomIn(),
                      edge_refine=None if getattr(args, "no_edge_refine", False) else EdgeRefine())


def _save_png(array, path: str | os.PathLike) -> None:
    from PIL import Image

    try:
        Image.fromarray(array).save(path, format="PNG")
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise CliError(f"cannot write {path}: {reason}") from None


def _write_text(path: str | os.PathLike, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


def _check_output_dir(path: str | os.PathLike | None) -> None:
    """Fail fast (before a long run) when an output file's folder does not exist."""
    if path is None:
        return
    parent = Path(path).parent
    if not parent.is_dir():
        raise CliError(f"cannot write {path}: folder {parent} does not exist")


def _mask_png(mask):
    import numpy as np

    return mask.astype(np.uint8) * np.uint8(255)


def _bbox(mask) -> list[int] | None:
    from sqsam_core.geometry import mask_box

    box = mask_box(mask)
    return None if box is None else [int(v) for v in box]


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="PATH", default=None,
                        help="ONNX model file (default: the bundled model, or $SQSAM_MODEL)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="ONNX Runtime threads (default: one per core)")


# --------------------------------------------------------------------------------------------
# sqsam predict
# --------------------------------------------------------------------------------------------


def cmd_predict(args) -> int:
    from sqsam_core.imageio import load_image
    from sqsam_core.prompts import max_clicks_setting, validate_prompt

    clicks = [parse_click(c) for c in args.click]
    if len(clicks) > max_clicks_setting():
        raise InvalidPromptError(f"{len(clicks)} --click options; at most {max_clicks_setting()} are accepted "
                                 f"(SQSAM_MAX_CLICKS)")
    box = parse_box(args.box) if args.box is not None else None
    if not (args.out or args.overlay or args.json):
        raise CliError("nothing to write: give --out, --overlay and/or --json")
    _check_output_dir(args.out)
    _check_output_dir(args.overlay)
    image = load_image(args.image, max_pixels=args.max_pixels)
    height, width = image.shape[:2]
    # Check the prompt against the image before paying for the model.
    clicks, box, _ = validate_prompt(clicks, box, height, width, require_positive=True)

    model = _load_model(args)
    start = time.perf_counter()
    pred = model.predict_history(image, clicks, box=box, granularity=args.granularity)
    ms = (time.perf_counter() - start) * 1000.0

    if args.out:
        _save_png(_mask_png(pred.mask), args.out)
    if args.overlay:
        from sqsam_core.overlay import render_overlay

        _save_png(render_overlay(image, [pred.mask], clicks=clicks, box=box, alpha=args.alpha), args.overlay)

    area = int(pred.mask.sum())
    summary = {
        "score": round(float(pred.score), 4),
        "area": area,
        "bbox": _bbox(pred.mask),
        "model_version": model.spec.model_version,
        "ms": round(ms, 1),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        written = ", ".join(p for p in (args.out, args.overlay) if p)
        print(f"{written}: score {summary['score']:.3f}, area {area} px "
              f"({100.0 * area / (height * width):.1f}% of {width}x{height}), {ms:.0f} ms")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# sqsam automask
# --------------------------------------------------------------------------------------------


def cmd_automask(args) -> int:
    from sqsam_core.imageio import load_image
    from sqsam_core.overlay import render_overlay

    image = load_image(args.image, max_pixels=args.max_pixels)
    height, width = image.shape[:2]
    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {out_dir}: {exc.strerror or exc}") from None

    model = _load_model(args)
    start = time.perf_counter()
    objects = model.automask(image, max_objects=args.max_objects, min_score=args.min_score)
    ms = (time.perf_counter() - start) * 1000.0

    entries = []
    for i, obj in enumerate(objects, start=1):
        name = f"object_{i:02d}.png"
        _save_png(_mask_png(obj.mask), out_dir / name)
        entry = {
            "file": name,
            "score": round(float(obj.score), 4),
            "area": int(obj.mask.sum()),
            "bbox": _bbox(obj.mask),
        }
        if obj.clicks:
            entry["click"] = [round(float(obj.clicks[0][0]), 1), round(float(obj.clicks[0][1]), 1)]
        entries.append(entry)
    _save_png(render_overlay(image, [o.mask for o in objects], alpha=args.alpha), out_dir / "overlay.png")
    summary = {
        "image": str(args.image),
        "width": width,
        "height": height,
        "model_version": model.spec.model_version,
        "ms": round(ms, 1),
        "objects": entries,
    }
    _write_text(out_dir / "objects.json", json.dumps(summary, indent=2) + "\n")
    print(f"{out_dir}: {len(entries)} object(s), overlay.png, objects.json ({ms:.0f} ms)")
    for entry in entries:
        print(f"  {entry['file']}  score {entry['score']:.3f}  area {entry['area']} px  bbox {entry['bbox']}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# sqsam eval
# --------------------------------------------------------------------------------------------


def cmd_eval(args) -> int:
    from sqsam_core import evaluation, partwhole

    root = Path(args.dataset_dir)
    annotations = None
    if root.is_file():  # a COCO instances JSON or a Label Studio JSON export
        from sqsam_core.datasets import evaluate_annotations, read_annotations

        annotations = read_annotations(root, images_dir=args.images)
    elif not root.is_dir():
        raise CliError(f"{root}: no such file or directory")
    elif not (root / "images").is_dir() or not (root / "masks").is_dir():
        raise CliError(f"{root}: a data set folder must hold images/ and masks/")
    elif not any((root / "masks").glob("*.png")):
        raise CliError(f"{root / 'masks'}: no .png masks")
    _check_output_dir(args.json)
    _check_output_dir(args.plot)
    if args.plot:
        _require_matplotlib()

    model = _load_model(args)
    evaluate = evaluation.evaluate_dataset if annotations is None else evaluate_annotations
    report = evaluate(
        model, root if annotations is None else annotations, max_clicks=args.max_clicks, limit=args.limit,
        zero_click=not args.no_zero_click, progress=not args.no_progress,
    )
    print(evaluation.format_report(report))
    if annotations is None and partwhole.has_parts(root) and not args.no_parts:
        report["part_whole"] = partwhole.evaluate_parts(model, root, limit=args.limit, progress=not args.no_progress)
        print(partwhole.format_part_report(report["part_whole"]))
    if args.json:
        _write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"report: {args.json}")
    if args.plot:
        plot_miou_curve(report, args.plot)
        print(f"plot: {args.plot}")
    return EXIT_OK


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install 'sqsam[dev]' (or matplotlib>=3.8)") from None
    return matplotlib


def plot_miou_curve(report: dict, path: str | os.PathLike) -> None:
    """Write a PNG of mIoU against the number of clicks (matplotlib, imported lazily)."""
    matplotlib = _require_matplotlib()
    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    miou = report["mIoU@k"]
    clicks = list(range(1, len(miou) + 1))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    try:
        label = (f"{report.get('model_version', 'model')}  "
                 f"(NoC@85 {report['NoC@85']:.2f}, NoC@90 {report['NoC@90']:.2f})")
        ax.plot(clicks, miou, marker="o", markersize=3.5, linewidth=1.8, color="#1e90ff", label=label)
        for t, style in ((0.85, ":"), (0.90, "--")):
            ax.axhline(t, color="0.45", linestyle=style, linewidth=0.9)
            ax.text(0.995, t, f"{t:.2f}", transform=ax.get_yaxis_transform(), va="bottom", ha="right",
                    fontsize=8, color="0.35")
        ax.set_xlabel("clicks")
        ax.set_ylabel("mIoU")
        ax.set_xlim(0.5, len(miou) + 0.5)
        ax.set_xticks(clicks if len(clicks) <= 20 else clicks[:: max(1, len(clicks) // 10)])
        ax.set_ylim(max(0.0, min(miou) - 0.05), 1.0)
        ax.grid(True, alpha=0.3)
        title = f"{report.get('dataset', 'dataset')}: mIoU vs clicks ({report.get('objects', '?')} objects)"
        ax.set_title(title, fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        try:
            fig.savefig(path, format="png")
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``sqsam: error: ...`` (no usage block hiding the message)."""

    def error(self, message: str):
        _error(f"{message} (see: {self.prog} --help)")
        raise SystemExit(EXIT_USAGE)


#: Options whose value may start with '-' (a negative coordinate): ``--click -5,10``.
_VALUE_OPTIONS = ("--click", "--box")


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--click -5,10`` -> ``--click=-5,10``: argparse would read ``-5,10`` as an option."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if (arg in _VALUE_OPTIONS and i + 1 < len(args) and args[i + 1].startswith("-")
                and len(args[i + 1]) > 1 and (args[i + 1][1].isdigit() or args[i + 1][1] in ".,")):
            out.append(f"{arg}={args[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    from sqsam_core.imageio import DEFAULT_MAX_PIXELS

    parser = _Parser(
        prog="sqsam",
        description="CPU-first interactive segmentation (early-fusion SqueezeSAM).",
    )
    parser.add_argument("--version", action="version", version=f"sqsam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    image_options = argparse.ArgumentParser(add_help=False)
    image_options.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                               help=f"refuse images over N pixels (default {DEFAULT_MAX_PIXELS})")
    image_options.add_argument("--alpha", type=_probability, default=0.5,
                               help="overlay tint opacity in [0, 1] (default 0.5)")

    p = sub.add_parser(
        "predict", parents=[image_options],
        help="segment one object from clicks and/or a box",
        description="Segment one object. Clicks are pixels, X = column, Y = row; "
                    "all clicks go to the model in order, each prediction fed back (as the model was trained).",
    )
    p.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, ...; EXIF orientation applied)")
    p.add_argument("--click", action="append", default=[], metavar="X,Y[,+|-]",
                   help="a click: X,Y or X,Y,+ positive, X,Y,- negative (repeat, oldest first; "
                        "write --click=-X,Y for a value starting with '-')")
    p.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a box around the object, pixels")
    p.add_argument("--granularity", choices=GRANULARITIES, default="whole",
                   help="what a single click selects: the whole object holding it (default) or the clicked part")
    p.add_argument("--out", metavar="MASK.png", help="write the mask (PNG, 255 = object)")
    p.add_argument("--overlay", metavar="OVERLAY.png", help="write the mask tinted over the image, clicks drawn")
    p.add_argument("--json", action="store_true",
                   help='print {"score", "area", "bbox", "model_version", "ms"} as JSON')
    _add_model_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "automask", parents=[image_options],
        help="find the salient objects of an image (no clicks)",
        description="Salient objects, best first: object_NN.png masks, overlay.png and objects.json in DIR.",
    )
    p.add_argument("image", metavar="IMAGE", help="image file")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="folder for the results (created)")
    p.add_argument("--max-objects", type=positive_int, default=5, metavar="N", help="at most N objects (default 5)")
    p.add_argument("--min-score", type=_probability, default=0.5, metavar="S",
                   help="drop objects whose predicted IoU is under S (default 0.5)")
    _add_model_options(p)
    p.set_defaults(func=cmd_automask)

    p = sub.add_parser(
        "eval",
        help="RITM click protocol on a data set: NoC, NoF, mIoU@k",
        description="Evaluate on DATASET_DIR (images/ and masks/, 255 object, 128 ignore) with the RITM "
                    "protocol: NoC@85/90, NoF@85/90, mIoU@k, zero-click IoU, per-click latency.",
    )
    p.add_argument("dataset_dir", metavar="DATASET_DIR",
                   help="folder holding images/ and masks/, a COCO instances JSON or a Label Studio JSON export")
    p.add_argument("--images", metavar="DIR", default=None,
                   help="where a JSON's image files are (default: beside it, or in images/ beside it)")
    p.add_argument("--max-clicks", type=positive_int, default=20, metavar="N", help="clicks per object (default 20)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N objects")
    p.add_argument("--json", metavar="OUT.json", help="write the full report (with per-object IoUs)")
    p.add_argument("--plot", metavar="CURVE.png", help="plot mIoU against clicks (needs matplotlib)")
    p.add_argument("--no-zero-click", action="store_true", help="skip the zero-click (automask) IoU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-zoom", action="store_true",
                   help="every click sees the whole image (default: zoom-in from the second click)")
    p.add_argument("--no-edge-refine", action="store_true",
                   help="masks as the network upsamples them (default: uncertain boundary snapped to image edges)")
    p.add_argument("--no-parts", action="store_true",
                   help="skip the part/whole clicks a folder with labels/ (part label maps) also gets")
    _add_model_options(p)
    p.set_defaults(func=cmd_eval)

    register_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sqsam`` command line; returns the exit code."""
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
        except SystemExit as exc:  # --help, --version, argparse errors (code 2)
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        try:
            result = args.func(args)
        except ModuleNotFoundError as exc:  # an optional package the command imports when it runs
            if missing_package(exc) is None:
                raise
            raise CliError(missing_extra_hint(args.command, missing_package(exc))) from None
        return EXIT_OK if result is None else int(result)
    except CommandLoadError as exc:
        _error(str(exc))
        return EXIT_FAILED
    except SqsamError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        _error(f"{where}{exc.strerror or exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (sqsam ... | head): not an error worth a traceback.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep interpreter shutdown quiet
        except OSError:
            pass
        return 1


def _error(message: str) -> None:
    line = " ".join(str(message).split())
    print(f"sqsam: error: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
