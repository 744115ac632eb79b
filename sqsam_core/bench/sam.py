"""The SAM-architecture speed baseline of ``sqsam bench`` (speed only, never quality).

SAM ViT-B (``segment-anything``) and, when a package provides its code, MobileSAM's TinyViT
encoder (``mobilesam-mirror``, import name ``mobile_sam``) are built with *random* weights, and
their image encoder and prompt decoder are exported to ONNX once, into a cache folder
(``$SQSAM_BENCH_CACHE``, else ``~/.cache/sqsam/bench``). The export runs in a subprocess
(``python -m sqsam_core.bench.sam_export VARIANT``, :mod:`.sam_export`) so torch never enters the bench process.
Timing then uses ONNX Runtime on CPU with the same thread count as sqsam:

* first click = SAM preprocessing (resize the longest side to 1024, normalise, pad; numpy/cv2)
  + image encoder (1x3x1024x1024) + prompt decoder (one click, masks upsampled to the image
  size inside the graph, as ``SamOnnxModel`` does) + threshold;
* per click = prompt decoder with the clicks so far and the previous low-res mask + threshold;
* a 5-click interaction = first click + 4 per-click passes.

Both packages import ``torchvision`` (and MobileSAM ``timm``) only for helpers the export never
calls (``SamPredictor``'s resize, NMS of the automatic mask generator, ``DropPath``). Installing
torchvision from PyPI would pull a different torch, so when it is absent the export subprocess
registers inert stand-ins for exactly those names (see :func:`sqsam_core.bench.sam_export.stub_missing`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sqsam_core.bench.flops import count_macs
from sqsam_core.bench.stats import summarize

#: name -> (package that builds it, human-readable description)
VARIANTS = {
    "vit_b": ("segment_anything", "SAM ViT-B (segment-anything, random weights)"),
    "mobilesam": ("mobile_sam", "MobileSAM TinyViT-5M (mobilesam-mirror, random weights)"),
    "tiny": ("segment_anything", "tiny SAM-shaped ViT (tests only, not a baseline)"),
}
DEFAULT_VARIANTS = ("vit_b", "mobilesam")
OPSET = 17
SAM_SIZE = 1024
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
EXPORT_FORMAT = 1  # bump to invalidate cached exports
TRACE_IMAGE_SIZE = (864, 1152)  # (height, width) the decoder's mask postprocessing is traced with


def default_cache_dir() -> Path:
    env = os.environ.get("SQSAM_BENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sqsam" / "bench"


def variant_paths(variant: str, cache_dir: Path) -> dict[str, Path]:
    return {
        "encoder": cache_dir / f"{variant}-encoder.onnx",
        "decoder": cache_dir / f"{variant}-decoder.onnx",
        "stamp": cache_dir / f"{variant}.json",
    }


def is_cached(variant: str, cache_dir: Path) -> bool:
    paths = variant_paths(variant, cache_dir)
    if not all(p.is_file() for p in paths.values()):
        return False
    try:
        stamp = json.loads(paths["stamp"].read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("format") == EXPORT_FORMAT


def unavailable_reason(variant: str) -> str | None:
    """Why ``variant`` cannot be exported here (None when it can)."""
    if variant not in VARIANTS:
        return f"unknown variant {variant!r} (choose from {', '.join(VARIANTS)})"
    package = VARIANTS[variant][0]
    for module, hint in (("torch", "torch"), (package, "segment-anything" if package == "segment_anything"
                                                 else "mobilesam-mirror"), ("onnx", "onnx")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'sqsam[bench]' or {hint})"
    return None


def export(variant: str, cache_dir: Path, log: Callable[[str], None] = print, timeout: float | None = None) -> None:
    """Export ``variant`` into ``cache_dir`` in a subprocess; raises RuntimeError on failure."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "sqsam_core.bench.sam_export", variant, "--cache-dir", str(cache_dir)]
    log(f"exporting {VARIANTS[variant][1]} to ONNX in {cache_dir} (once; torch, may take minutes)")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"export of {variant} failed (exit {proc.returncode}): {tail[0][:300]}")
    log(f"exported {variant} in {time.perf_counter() - start:.0f} s")


# ------------------------------------------------------------------------------------------------
# Timing (ONNX Runtime only; runs in the bench process)
# ------------------------------------------------------------------------------------------------


def sam_preprocess(rgb: np.ndarray) -> tuple[np.ndarray, float, float]:
    """SAM's preprocessing: longest side to 1024, normalise, pad bottom/right -> (1,3,1024,1024)."""
    import cv2

    h, w = rgb.shape[:2]
    scale = SAM_SIZE / max(h, w)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.zeros((1, 3, SAM_SIZE, SAM_SIZE), np.float32)
    canvas[0, :, :new_h, :new_w] = ((resized.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1)
    return canvas, new_w / w, new_h / h


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _decoder_inputs(clicks: Sequence[tuple[float, float, bool]], sx: float, sy: float, height: int, width: int,
                    prev_low_res: np.ndarray | None) -> dict[str, np.ndarray]:
    coords = np.array([[x * sx, y * sy] for x, y, _ in clicks] + [[0.0, 0.0]], np.float32)[None]
    labels = np.array([1.0 if p else 0.0 for _, _, p in clicks] + [-1.0], np.float32)[None]
    has_mask = prev_low_res is not None
    return {
        "image_embeddings": None,  # filled in by the caller
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": prev_low_res if has_mask else np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.array([1.0 if has_mask else 0.0], np.float32),
        "orig_im_size": np.array([height, width], np.float32),
    }


def time_variant(variant: str, cache_dir: Path, rgb: np.ndarray, interactions: Sequence[Sequence[tuple]],
                 threads: int, encoder_repeats: int) -> dict:
    """Time one exported variant on ``rgb``; ``interactions``: click sequences (image pixels)."""
    paths = variant_paths(variant, cache_dir)
    stamp = json.loads(paths["stamp"].read_text())
    start = time.perf_counter()
    encoder = _session(paths["encoder"], threads)
    decoder = _session(paths["decoder"], threads)
    load_ms = (time.perf_counter() - start) * 1000.0
    height, width = rgb.shape[:2]

    pre_ms, enc_ms = [], []
    embeddings = None
    for i in range(encoder_repeats + 1):  # the first run (allocations) is reported apart
        t0 = time.perf_counter()
        tensor, sx, sy = sam_preprocess(rgb)
        t1 = time.perf_counter()
        (embeddings,) = encoder.run(["image_embeddings"], {"image": tensor})
        t2 = time.perf_counter()
        if i == 0:
            first_run_ms = (t2 - t0) * 1000.0
            continue
        pre_ms.append((t1 - t0) * 1000.0)
        enc_ms.append((t2 - t1) * 1000.0)

    def decode(clicks, prev):
        inputs = _decoder_inputs(clicks, sx, sy, height, width, prev)
        inputs["image_embeddings"] = embeddings
        masks, _, low_res = decoder.run(["masks", "iou_predictions", "low_res_masks"], inputs)
        return masks[0, 0] > 0.0, low_res

    decode(interactions[0][:1], None)  # warm-up
    first_dec, next_dec = [], []
    for clicks in interactions:
        prev = None
        for n in range(1, len(clicks) + 1):
            t0 = time.perf_counter()
            _, prev = decode(clicks[:n], prev)
            (first_dec if n == 1 else next_dec).append((time.perf_counter() - t0) * 1000.0)


    pre, enc = summarize(pre_ms), summarize(enc_ms)
    dec1, decn = summarize(first_dec), summarize(next_dec or first_dec)
    first_click = pre["p50_ms"] + enc["p50_ms"] + dec1["p50_ms"]
    result = {
        "description": stamp.get("description", VARIANTS[variant][1]),
        "parameters": stamp.get("parameters"),
        "encoder_parameters": stamp.get("encoder_parameters"),
        "export": {k: stamp.get(k) for k in ("torch", "segment_anything", "mobilesam_mirror", "opset",
                                             "stubbed_modules", "export_seconds")},
        "threads": threads,
        "load_ms": round(load_ms, 1),
        "encoder_first_run_ms": round(first_run_ms, 1),
        "preprocess": pre,
        "encoder": enc,
        "decoder_first_click": dec1,
        "decoder_per_click": decn,
        "first_click_ms": round(first_click, 2),
        "per_click_ms": decn["p50_ms"],
        "five_click_ms": round(first_click + 4 * decn["p50_ms"], 2),
    }
    try:
        dec_feeds = _decoder_inputs(interactions[0][:1], sx, sy, height, width, None)
        dec_feeds["image_embeddings"] = embeddings
        macs = _cached_macs(variant, cache_dir, {"image": tensor}, dec_feeds)
        result["encoder_gmacs"] = round(macs["encoder"] / 1e9, 3)
        result["decoder_gmacs"] = round(macs["decoder"] / 1e9, 3)
        result["encoder_achieved_gflops"] = round(2 * macs["encoder"] / 1e9 / (enc["p50_ms"] / 1000.0), 2)
    except Exception as exc:  # counting is informative only
        result["macs_error"] = f"{type(exc).__name__}: {exc}"[:200]
    return result


def _cached_macs(variant: str, cache_dir: Path, enc_feeds: dict, dec_feeds: dict) -> dict:
    """Encoder and decoder (one click) MACs, counted once per export and kept beside it."""
    paths = variant_paths(variant, cache_dir)
    stamp_key = [os.path.getmtime(paths["encoder"]), os.path.getmtime(paths["decoder"])]
    cache = cache_dir / f"{variant}-macs.json"
    try:
        data = json.loads(cache.read_text())
        if data.get("key") == stamp_key:
            return data
    except (OSError, ValueError):
        pass
    enc = count_macs(paths["encoder"], feeds=enc_feeds)
    dec = count_macs(paths["decoder"], feeds=dec_feeds)
    data = {"key": stamp_key, "encoder": enc["macs"], "decoder": dec["macs"],
            "unresolved": enc["unresolved_count"] + dec["unresolved_count"]}
    try:
        cache.write_text(json.dumps(data) + "\n")
    except OSError:
        pass
    return data


def run_baseline(variants: Sequence[str], cache_dir: Path, rgb: np.ndarray, interactions: Sequence[Sequence[tuple]],
                 threads: int, encoder_repeats: int, allow_export: bool,
                 log: Callable[[str], None] = print) -> dict:
    """Export (if allowed and needed) and time each variant; failures become per-variant reasons."""
    out: dict = {}
    for variant in variants:
        reason = None
        if not is_cached(variant, cache_dir):
            reason = unavailable_reason(variant)
            if reason is None and not allow_export:
                reason = (f"not exported yet (cache {cache_dir}); run `sqsam bench` without --quick, "
                          f"or with --sam-export")
            if reason is None:
                try:
                    export(variant, cache_dir, log)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    reason = str(exc)
        if reason is not None:
            out[variant] = {"status": "skipped", "reason": reason}
            log(f"SAM baseline {variant}: skipped ({reason})")
            continue
        log(f"SAM baseline {variant}: timing encoder x{encoder_repeats} and decoder")
        try:
            out[variant] = {"status": "ok", **time_variant(variant, cache_dir, rgb, interactions, threads,
                                                           encoder_repeats)}
        except Exception as exc:  # a broken cache file, an ORT failure: report, don't crash the bench
            out[variant] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    return out
