"""``sqsam bench``'s whole run: every section in order, one JSON-ready report.

See docs/benchmarks.md for the fields. Nothing here asserts a time: targets are reported as met
or missed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from sqsam_core import __version__
from sqsam_core.bench import sam
from sqsam_core.bench.config import TARGETS, BenchConfig, Log
from sqsam_core.bench.flops import count_macs
from sqsam_core.bench.http import bench_label_studio
from sqsam_core.bench.machine import (
    loadavg,
    machine_info,
    measure_peak_gflops,
    proc_status,
    reset_peak_rss,
    ru_maxrss_mb,
)
from sqsam_core.bench.stats import ms, size_label
from sqsam_core.bench.synthetic import SyntheticImage, click_sequence, synthetic_jpeg
from sqsam_core.bench.timing import (
    bench_automask,
    bench_first_click,
    bench_per_click,
    bench_throughput,
    load_model,
    profile_model,
)
from sqsam_core.errors import BenchError


def run_bench(config: BenchConfig, log: Log | None = None) -> dict:
    """Run every section; returns the report (see docs/benchmarks.md for the fields)."""
    from sqsam_core.predictor import default_model_path

    log = log or (lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True))
    if not config.sizes:
        raise BenchError("at least one image size is needed")
    if len(config.first_click_repeats) < len(config.sizes):
        config.first_click_repeats = list(config.first_click_repeats) + \
            [config.first_click_repeats[-1]] * (len(config.sizes) - len(config.first_click_repeats))
    started = time.perf_counter()
    report: dict = {
        "sqsam_version": __version__,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": "quick" if config.quick else "full",
        "machine": machine_info(),
    }
    cores = report["machine"]["usable_cores"] or 1
    rss_before = proc_status("VmRSS")

    log(f"generating synthetic images {', '.join(f'{w}x{h}' for w, h in config.sizes)}")
    images = [synthetic_jpeg(w, h, seed=i) for i, (w, h) in enumerate(config.sizes)]
    main_image = images[0]
    extra = [synthetic_jpeg(main_image.width, main_image.height, seed=10 + i) for i in range(3)]
    pool = [main_image] + extra

    log(f"measuring the machine's float32 peak (numpy matmul n={config.matmul_size})")
    report["peak"] = measure_peak_gflops(config.matmul_size, config.matmul_repeats)

    peak_reset = reset_peak_rss()
    start = time.perf_counter()
    model = load_model(config, config.threads)
    load_ms = ms(time.perf_counter() - start)
    path = Path(config.model_path or default_model_path())
    report["model"] = {
        "path": str(path),
        "file_mb": round(path.stat().st_size / 2**20, 2),
        "model_version": model.spec.model_version,
        "input_size": model.spec.input_size,
        "stride": model.spec.stride,
        "num_masks": model.spec.num_masks,
        "ort_threads": config.threads or f"onnxruntime default ({cores} usable cores)",
        "load_ms": round(load_ms, 1),
        "rss_after_load_mb": proc_status("VmRSS"),
    }
    try:
        report["flops"] = count_macs(path)
    except Exception as exc:  # counting is informative only
        report["flops"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}

    log(f"per-click latency: {config.interactions} interactions x {config.clicks_per_interaction} clicks")
    report["per_click"] = bench_per_click(model, main_image, config)
    model_ms = report["per_click"]["model_only"]["p50_ms"]
    if report["flops"].get("macs") and model_ms:
        achieved = 2 * report["flops"]["macs"] / (model_ms / 1000.0) / 1e9
        report["per_click"]["achieved_gflops"] = round(achieved, 2)
        report["per_click"]["fraction_of_peak"] = round(achieved / report["peak"]["gflops"], 4)

    report["first_click"] = []
    for image, repeats in zip(images, config.first_click_repeats):
        log(f"first click on a new {size_label(image.width, image.height)} image ({repeats} repeats)")
        report["first_click"].append(bench_first_click(model, image, repeats))

    log(f"automask ({config.automask_repeats} images)")
    report["automask"] = bench_automask(model, main_image, config.automask_repeats)

    report["throughput"] = bench_throughput(config, pool, cores, log)

    if config.label_studio:
        log("Label Studio backend over HTTP")
        report["label_studio"] = bench_label_studio(config, main_image, pool, log)
    else:
        report["label_studio"] = {"status": "skipped", "reason": "disabled (--no-label-studio)"}

    if config.profile_runs > 0 and model.backend.last_inputs is not None:
        log("onnxruntime op profile")
        try:
            report["profile"] = profile_model(config, model.spec, model.backend.last_inputs, config.threads,
                                              config.profile_runs)
        except Exception as exc:  # profiling is informative only
            report["profile"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}

    report["memory"] = {
        "method": "VmHWM of /proc/self/status, reset (clear_refs) after generating the test images, so it covers "
                  "model load and every sqsam section above (12 MP decode included), not the SAM baseline"
                  if peak_reset else "ru_maxrss (whole process lifetime, image generation included)",
        "rss_start_mb": rss_before,
        "peak_rss_mb": proc_status("VmHWM") if peak_reset else ru_maxrss_mb(),
        "ru_maxrss_mb": ru_maxrss_mb(),
    }

    report["sam_baseline"] = sam_section(config, report, main_image, cores, log)
    report["memory"]["ru_maxrss_after_baseline_mb"] = ru_maxrss_mb()
    report["targets"] = evaluate_targets(report)
    report["machine"]["loadavg_end"] = loadavg()
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def sam_section(config: BenchConfig, report: dict, image: SyntheticImage, cores: int, log: Log) -> dict:
    threads = config.threads or cores
    first = report["first_click"][0]
    ours_first = first["without_decode_p50_ms"]
    ours_click = report["per_click"]["p50_ms"]
    ours = {
        "first_click_ms": ours_first,
        "per_click_ms": ours_click,
        "five_click_ms": round(ours_first + 4 * ours_click, 2),
        "note": "first click = letterbox/normalise + model + mask at image size (decode excluded, as for SAM); "
                "per click = per-click p50",
    }
    section: dict = {
        "method": "random-weight SAM models exported to ONNX (opset 17), onnxruntime CPU with the same thread "
                  "count; first click = preprocess + encoder + decoder, per click = decoder (clicks so far + "
                  "previous low-res mask), 5 clicks = first + 4 per-click; ratios = theirs / ours",
        "threads": threads,
        "image": {"width": image.width, "height": image.height},
        "ours": ours,
    }
    if not config.sam:
        section.update(status="skipped", reason="disabled (--no-sam)")
        return section
    from sqsam_core.imageio import decode_image_bytes

    cache_dir = Path(config.sam_cache_dir) if config.sam_cache_dir else sam.default_cache_dir()
    rng = np.random.default_rng(4)
    interactions = [click_sequence(image, config.clicks_per_interaction, rng)
                    for _ in range(max(2, config.interactions // 2))]
    variants = sam.run_baseline(config.sam_variants, cache_dir, decode_image_bytes(image.jpeg), interactions,
                                threads, config.sam_encoder_repeats, config.sam_export, log)
    section["cache_dir"] = str(cache_dir)
    section["variants"] = variants
    ratios = {}
    for name, result in variants.items():
        if result.get("status") != "ok":
            continue
        ratios[name] = {
            "first_click": round(result["first_click_ms"] / ours_first, 2) if ours_first else None,
            "per_click": round(result["per_click_ms"] / ours_click, 2) if ours_click else None,
            "five_click": round(result["five_click_ms"] / ours["five_click_ms"], 2) if ours["five_click_ms"] else None,
        }
    section["ratios"] = ratios
    section["status"] = "ok" if ratios else "skipped"
    if not ratios:
        section["reason"] = "; ".join(f"{k}: {v.get('reason')}" for k, v in variants.items())
    return section


def evaluate_targets(report: dict) -> list[dict]:
    values = {
        "per_click_p50_ms": report.get("per_click", {}).get("p50_ms"),
        "first_click_1mp_p50_ms": (report.get("first_click") or [{}])[0].get("p50_ms"),
        "label_studio_interactive_p50_ms": report.get("label_studio", {}).get("interactive", {}).get("p50_ms"),
        "sam_vit_b_first_click_ratio": report.get("sam_baseline", {}).get("ratios", {}).get("vit_b", {})
        .get("first_click"),
    }
    out = []
    for key, description, op, target in TARGETS:
        value = values.get(key)
        met = None if value is None else (value <= target if op == "<=" else value >= target)
        out.append({"key": key, "description": description, "value": value, "target": f"{op} {target:g}",
                    "met": met})
    return out

