"""``sqsam bench``: its options, their checks and the command that runs :func:`~sqsam_core.bench.run.run_bench`.

    sqsam bench [--json out.json] [--quick] [--model PATH] [--threads N] [--no-sam] ...
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqsam_core.argtypes import positive_int
from sqsam_core.bench.config import BenchConfig
from sqsam_core.bench.report import format_report
from sqsam_core.bench.run import run_bench
from sqsam_core.bench.sam import VARIANTS
from sqsam_core.errors import BenchError


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", part)
        if not match or int(match.group(1)) < 8 or int(match.group(2)) < 8:
            raise BenchError(f"--sizes: expected WxH[,WxH...] with sides >= 8, got {part!r}")
        sizes.append((int(match.group(1)), int(match.group(2))))
    return sizes


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise BenchError(f"{what}: expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise BenchError(f"{what}: expected comma-separated positive integers, got {text!r}")
    return values


def config_from_args(args) -> BenchConfig:
    overrides: dict = {
        "model_path": args.model,
        "threads": args.threads,
        "label_studio": not args.no_label_studio,
        "sam": not args.no_sam,
        "sam_cache_dir": args.sam_cache,
    }
    if args.sizes:
        overrides["sizes"] = _parse_sizes(args.sizes)
    if args.workers:
        overrides["workers"] = _parse_ints(args.workers, "--workers")
    if args.sam_variants:
        overrides["sam_variants"] = [v.strip() for v in args.sam_variants.split(",") if v.strip()]
        bad = [v for v in overrides["sam_variants"] if v not in VARIANTS]
        if bad:
            raise BenchError(f"--sam-variants: unknown {', '.join(bad)} (choose from {', '.join(VARIANTS)})")
    if args.repeats:
        overrides.update(interactions=args.repeats, first_click_repeats=(args.repeats,), automask_repeats=args.repeats,
                         ls_interactions=args.repeats, ls_batch_requests=args.repeats)
    if args.no_profile:
        overrides["profile_runs"] = 0
    if args.sam_export:
        overrides["sam_export"] = True
    return BenchConfig.quick_config(**overrides) if args.quick else BenchConfig(**overrides)


def cmd_bench(args) -> int:
    config = config_from_args(args)
    if config.model_path and not Path(config.model_path).is_file():
        raise BenchError(f"{config.model_path}: no such model file")
    report = run_bench(config)
    print(format_report(report))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise BenchError(f"cannot write {args.json}: {exc.strerror or exc}") from None
        print(f"report: {args.json}")
    return 0


def register_commands(subparsers) -> None:
    """Add ``sqsam bench`` (the ``sqsam.commands`` entry point ``bench``)."""
    p = subparsers.add_parser(
        "bench",
        help="measure latency, throughput, memory and cost on this machine (and a SAM baseline)",
        description="Per-click and first-click latency, automask, bulk throughput, peak RSS, FLOPs and the "
                    "fraction of the machine's peak, the Label Studio HTTP path and a SAM ViT-B / MobileSAM speed "
                    "baseline, all in one run on synthetic images. See docs/benchmarks.md.",
    )
    p.add_argument("--json", metavar="OUT.json", help="write the full report as JSON")
    p.add_argument("--quick", action="store_true",
                   help="few repetitions (a minute); the SAM baseline only if already exported")
    p.add_argument("--model", metavar="PATH", default=None, help="ONNX model file (default: the bundled model)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="ONNX Runtime threads for the interactive model and SAM (default: one per core)")
    p.add_argument("--sizes", metavar="WxH,...", default=None,
                   help="new-image sizes for first-click latency; the first is also used for per-click, automask, "
                        "throughput and Label Studio (default 1152x864,4000x3000)")
    p.add_argument("--repeats", type=positive_int, default=None, metavar="N",
                   help="override the repetition counts (interactions, first clicks, automask, requests)")
    p.add_argument("--workers", metavar="N,...", default=None, help="worker threads for throughput (default 1,2)")
    p.add_argument("--no-label-studio", action="store_true", help="skip the Label Studio HTTP measurements")
    p.add_argument("--no-profile", action="store_true", help="skip the onnxruntime op profile")
    p.add_argument("--no-sam", action="store_true", help="skip the SAM baseline")
    p.add_argument("--sam-variants", metavar="NAME,...", default=None,
                   help="SAM baselines to run: vit_b, mobilesam (default both)")
    p.add_argument("--sam-export", action="store_true",
                   help="export SAM models that are not cached yet even with --quick (minutes of CPU)")
    p.add_argument("--sam-cache", metavar="DIR", default=None,
                   help="folder for the exported SAM ONNX files (default $SQSAM_BENCH_CACHE or ~/.cache/sqsam/bench)")
    p.set_defaults(func=cmd_bench)
