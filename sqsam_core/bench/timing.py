"""Timing of sqsam itself in ``sqsam bench``: per click, first click on a new image, automask,
bulk throughput and an ONNX Runtime op profile of one model pass.

Clicks are ``(x, y, positive)`` in image pixels, x = column.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from sqsam_core.bench.config import BenchConfig, Log
from sqsam_core.bench.stats import ms, size_label, summarize
from sqsam_core.bench.synthetic import SyntheticImage, click_sequence


class TimedBackend:
    """Wraps a predictor backend and records each model pass (thread-safe)."""

    def __init__(self, backend):
        self.backend = backend
        self.durations: list[float] = []
        self.last_inputs: dict | None = None
        self._lock = threading.Lock()

    def __call__(self, inputs):
        start = time.perf_counter()
        out = self.backend(inputs)
        elapsed = ms(time.perf_counter() - start)
        with self._lock:
            self.durations.append(elapsed)
            self.last_inputs = inputs
        return out

    def mark(self) -> int:
        with self._lock:
            return len(self.durations)

    def since(self, mark: int) -> list[float]:
        with self._lock:
            return self.durations[mark:]



def load_model(config: BenchConfig, threads: int | None, timed: bool = True):
    from sqsam_core.predictor import SqueezeSAM

    model = SqueezeSAM(config.model_path, threads=threads)
    if timed:
        model.backend = TimedBackend(model.backend)
    return model


def bench_per_click(model, image: SyntheticImage, config: BenchConfig) -> dict:
    from sqsam_core.imageio import decode_image_bytes

    rgb = decode_image_bytes(image.jpeg)
    key = "bench:per-click"
    model.prepare(rgb, cache_key=key)
    rng = np.random.default_rng(1)
    warm = click_sequence(image, 2, rng)
    prev = None
    for n in (1, 2):
        prev = model.predict(rgb, warm[:n], prev=prev, cache_key=key)
    backend: TimedBackend = model.backend
    totals, passes = [], []
    for _ in range(config.interactions):
        clicks = click_sequence(image, config.clicks_per_interaction, rng)
        prev = None
        for n in range(1, len(clicks) + 1):
            mark = backend.mark()
            start = time.perf_counter()
            prev = model.predict(rgb, clicks[:n], prev=prev, cache_key=key)
            totals.append(ms(time.perf_counter() - start))
            passes.extend(backend.since(mark))
    total, model_only = summarize(totals), summarize(passes)
    overhead = [t - p for t, p in zip(totals, passes)]
    return {
        "image": {"width": image.width, "height": image.height},
        "input_size": model.spec.input_size,
        "clicks": len(totals),
        **total,
        "model_only": model_only,
        "pre_post_p50_ms": summarize(overhead)["p50_ms"],
    }


def bench_first_click(model, image: SyntheticImage, repeats: int) -> dict:
    from sqsam_core.imageio import decode_image_bytes

    rng = np.random.default_rng(2)
    backend: TimedBackend = model.backend
    stages: dict[str, list[float]] = {"decode": [], "prepare": [], "predict": [], "model": [], "total": [],
                                      "no_decode": []}
    for i in range(repeats + 1):  # one warm-up for this size (allocator, cv2 thread pool)
        clicks = click_sequence(image, 1, rng)
        mark = backend.mark()
        t0 = time.perf_counter()
        rgb = decode_image_bytes(image.jpeg)
        t1 = time.perf_counter()
        prepared = model.prepare(rgb, cache_key=f"bench:first:{image.width}x{image.height}:{i}")
        t2 = time.perf_counter()
        model.predict(prepared, clicks)
        t3 = time.perf_counter()
        del rgb
        if i == 0:
            continue
        stages["decode"].append(ms(t1 - t0))
        stages["prepare"].append(ms(t2 - t1))
        stages["predict"].append(ms(t3 - t2))
        stages["model"].append(sum(backend.since(mark)))
        stages["total"].append(ms(t3 - t0))
        stages["no_decode"].append(ms(t3 - t1))
    total = summarize(stages["total"])
    return {
        "label": size_label(image.width, image.height),
        "width": image.width,
        "height": image.height,
        "megapixels": round(image.width * image.height / 1e6, 2),
        "jpeg_kb": round(len(image.jpeg) / 1024, 1),
        **total,
        "decode_p50_ms": summarize(stages["decode"])["p50_ms"],
        "prepare_p50_ms": summarize(stages["prepare"])["p50_ms"],
        "predict_p50_ms": summarize(stages["predict"])["p50_ms"],
        "model_p50_ms": summarize(stages["model"])["p50_ms"],
        "without_decode_p50_ms": summarize(stages["no_decode"])["p50_ms"],
    }


def bench_automask(model, image: SyntheticImage, repeats: int) -> dict:
    from sqsam_core.imageio import decode_image_bytes

    rgb = decode_image_bytes(image.jpeg)
    backend: TimedBackend = model.backend
    model.automask(rgb, cache_key="bench:automask:warm")
    times, passes, objects = [], [], []
    for i in range(repeats):
        mark = backend.mark()
        start = time.perf_counter()
        found = model.automask(rgb, cache_key=f"bench:automask:{i}")
        times.append(ms(time.perf_counter() - start))
        passes.append(len(backend.since(mark)))
        objects.append(len(found))
    return {
        "image": {"width": image.width, "height": image.height},
        **summarize(times),
        "model_passes_mean": round(float(np.mean(passes)), 2),
        "objects_mean": round(float(np.mean(objects)), 2),
    }


def bench_throughput(config: BenchConfig, images: Sequence[SyntheticImage], cores: int, log: Log) -> list[dict]:
    """Bulk pre-annotation: decode + automask per task, ``workers`` threads sharing one model."""
    from sqsam_core.imageio import decode_image_bytes

    results = []
    for workers in config.workers:
        threads = max(1, cores // workers)
        model = load_model(config, threads, timed=False)
        model.predict(decode_image_bytes(images[0].jpeg), cache_key="bench:tp:warm")
        latencies: list[float] = []
        lock = threading.Lock()

        def task(i: int, model=model) -> int:
            start = time.perf_counter()
            rgb = decode_image_bytes(images[i % len(images)].jpeg)
            found = model.automask(rgb, cache_key=f"bench:tp:{workers}:{i}")
            with lock:
                latencies.append(ms(time.perf_counter() - start))
            return len(found)

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(task, range(config.throughput_images)))
        wall = time.perf_counter() - start
        results.append({
            "workers": workers,
            "ort_threads_per_worker": threads,
            "images": config.throughput_images,
            "seconds": round(wall, 3),
            "images_per_s": round(config.throughput_images / wall, 3),
            "latency_mean_ms": round(float(np.mean(latencies)), 1),
        })
        log(f"throughput: {workers} worker(s) x {threads} ORT thread(s): "
            f"{config.throughput_images / wall:.2f} images/s")
        del model
    return results


def profile_model(config: BenchConfig, spec, inputs: dict, threads: int | None, runs: int) -> dict:
    """Per-op-type kernel time of one model pass from ONNX Runtime's profiler."""
    import onnxruntime as ort

    from sqsam_core.predictor import default_model_path

    path = config.model_path or default_model_path()
    with tempfile.TemporaryDirectory(prefix="sqsam-prof-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(2):
            session.run(None, inputs)
        for _ in range(runs):
            session.run(None, inputs)
        trace = session.end_profiling()
        events = json.loads(Path(trace).read_text())
    # only the passes after the two warm-ups: Node events inside their model_run windows
    windows = sorted((ev["ts"], ev["ts"] + ev.get("dur", 0)) for ev in events
                     if ev.get("cat") == "Session" and ev.get("name") == "model_run")[2:]
    runs_us = [end - begin for begin, end in windows]
    by_op: dict[str, float] = {}
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            ts = ev.get("ts", 0)
            if any(begin <= ts <= end for begin, end in windows):
                op = ev.get("args", {}).get("op_name", "?")
                by_op[op] = by_op.get(op, 0.0) + ev.get("dur", 0)
    measured = max(1, len(windows))
    total = sum(by_op.values())
    top = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {
        "method": "onnxruntime enable_profiling, kernel time by op type (optimised graph), per pass",
        "runs": runs,
        "model_run_p50_ms": round(float(np.median(runs_us)) / 1000.0, 2) if runs_us else None,
        "kernel_ms_per_pass": round(total / measured / 1000.0, 2),
        "ops": [{"op": op, "ms_per_pass": round(us / measured / 1000.0, 2), "share": round(us / total, 3)}
                for op, us in top[:10]] if total else [],
    }

