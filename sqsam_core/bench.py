"""``sqsam bench``: speed, cost and scale of sqsam on this machine, in one run.

    sqsam bench [--json out.json] [--quick] [--model PATH] [--threads N] [--no-sam] ...

Everything is measured in one process on synthetic images generated in memory (smooth noise
plus flat shapes, JPEG-encoded with Pillow), so the run needs no data set:

* per click: ``SqueezeSAM.predict`` on a cached 1 MP image, clicks added one at a time with the
  previous prediction fed back (prompt maps, model, mapping the mask back to 1 MP);
* first click on a new image (1 MP and 12 MP): JPEG bytes -> decode -> letterbox/normalise ->
  model -> mask, stage by stage;
* automask per image, and bulk pre-annotation throughput (decode + automask) with 1 and 2
  worker threads sharing one model (ONNX Runtime threads = cores / workers);
* peak RSS, the model's FLOPs (counted from the ONNX graph) and the fraction of the machine's
  float32 matmul peak (measured in the same run) that one model pass achieves;
* an ONNX Runtime op profile of the model pass (where the time goes);
* the Label Studio backend over HTTP (interactive ``/predict`` and batch pre-annotation);
* the SAM ViT-B / MobileSAM speed baseline (:mod:`sqsam_core.bench_sam`, optional extra).

The method is described in docs/benchmarks.md. Nothing here asserts a time: targets are
reported as met or missed.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sqsam_core.errors import SqsamError

Log = Callable[[str], None]

#: Targets of the bench issue on the 2-core reference machine: (key, description, op, value).
TARGETS = (
    ("per_click_p50_ms", "per-click p50", "<=", 30.0),
    ("first_click_1mp_p50_ms", "first click, new 1 MP image, p50", "<=", 80.0),
    ("label_studio_interactive_p50_ms", "Label Studio /predict round trip p50", "<=", 60.0),
    ("sam_vit_b_first_click_ratio", "first click vs SAM ViT-B (x faster)", ">=", 5.0),
)

DEFAULT_SIZES = ((1152, 864), (4000, 3000))  # ~1 MP and 12 MP, 4:3
LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image"><Label value="Object" background="#1e90ff"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
</View>"""


class BenchError(SqsamError):
    """A bench option or input that is the user's to fix."""


@dataclass
class BenchConfig:
    """What to run and how often. :meth:`quick` is for development and tests."""

    model_path: str | None = None
    threads: int | None = None  # ONNX Runtime intra-op threads of the interactive model (None = ORT default)
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES  # first = the interactive / automask image
    interactions: int = 12  # per-click: this many interactions ...
    clicks_per_interaction: int = 5  # ... of this many clicks each
    first_click_repeats: Sequence[int] = (15, 5)  # per size
    automask_repeats: int = 8
    throughput_images: int = 12
    workers: Sequence[int] = (1, 2)
    matmul_size: int = 2048
    matmul_repeats: int = 5
    profile_runs: int = 20
    label_studio: bool = True
    ls_interactions: int = 10  # x clicks_per_interaction requests
    ls_batch_requests: int = 4
    ls_batch_tasks: int = 4
    sam: bool = True
    sam_variants: Sequence[str] = ("vit_b", "mobilesam")
    sam_cache_dir: str | None = None
    sam_export: bool = True  # export SAM models when they are not cached yet
    sam_encoder_repeats: int = 3
    quick: bool = False

    @classmethod
    def quick_config(cls, **overrides) -> "BenchConfig":
        base = dict(interactions=3, first_click_repeats=(3, 2), automask_repeats=2, throughput_images=3,
                    matmul_size=1024, matmul_repeats=3, profile_runs=5, ls_interactions=2,
                    ls_batch_requests=2, ls_batch_tasks=2, sam_export=False, sam_encoder_repeats=1, quick=True)
        base.update(overrides)
        return cls(**base)


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------


def summarize(ms: Sequence[float]) -> dict:
    """``{"n", "p50_ms", "p95_ms", "mean_ms", "min_ms", "max_ms"}`` of durations in milliseconds."""
    values = np.asarray(list(ms), np.float64)
    if values.size == 0:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "mean_ms": None, "min_ms": None, "max_ms": None}
    return {
        "n": int(values.size),
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p95_ms": round(float(np.percentile(values, 95)), 2),
        "mean_ms": round(float(values.mean()), 2),
        "min_ms": round(float(values.min()), 2),
        "max_ms": round(float(values.max()), 2),
    }


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def size_label(width: int, height: int) -> str:
    mp = width * height / 1e6
    return f"{mp:.0f}MP" if mp >= 0.95 else f"{width}x{height}"


def _proc_status(key: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MB; None off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M)
    return round(int(match.group(1)) / 1024.0, 1) if match else None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _ru_maxrss_mb() -> float:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(value / (1024.0 * 1024.0) if sys.platform == "darwin" else value / 1024.0, 1)


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
        elapsed = _ms(time.perf_counter() - start)
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


# ------------------------------------------------------------------------------------------------
# Machine
# ------------------------------------------------------------------------------------------------


def machine_info() -> dict:
    import onnxruntime as ort

    cpu_model, physical = None, None
    try:
        text = Path("/proc/cpuinfo").read_text()
        models = re.findall(r"^model name\s*:\s*(.+)$", text, re.M)
        cpu_model = models[0].strip() if models else None
        cores = set()
        for block in text.split("\n\n"):
            fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
            fields = {k.strip(): v.strip() for k, v in fields.items()}
            if "core id" in fields:
                cores.add((fields.get("physical id"), fields["core id"]))
        physical = len(cores) or None
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    blas = None
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{deps.get('name')} {deps.get('version')}".strip()
    except Exception:  # numpy < 1.25 or an unusual build
        pass
    mem_gb = None
    try:
        mem_gb = round(int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    return {
        "cpu_model": cpu_model or platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "usable_cores": affinity,
        "memory_gb": mem_gb,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "blas": blas,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def measure_peak_gflops(n: int = 2048, repeats: int = 5) -> dict:
    """The machine's float32 peak, as numpy's BLAS ``sgemm`` reaches it: best of ``repeats``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up (thread pool start, page faults)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    best = min(times)
    return {
        "method": f"numpy float32 matmul {n}x{n} @ {n}x{n}, 2*n^3 FLOPs, best of {repeats} (all BLAS threads)",
        "n": n,
        "best_s": round(best, 4),
        "gflops": round(2.0 * n ** 3 / best / 1e9, 2),
    }


# ------------------------------------------------------------------------------------------------
# FLOPs from the ONNX graph
# ------------------------------------------------------------------------------------------------

MAC_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum")
UNCOUNTED_HEAVY_OPS = ("Attention", "MultiHeadAttention", "FusedMatMul", "QLinearConv", "QLinearMatMul",
                       "ConvInteger", "MatMulInteger", "Loop", "Scan", "If")


def _mac_tensors(node) -> list[str]:
    """The tensors whose shapes give a MAC-op node's cost."""
    op = node.op_type
    if op == "Conv":
        return [node.output[0], node.input[1]]
    if op == "ConvTranspose":
        return [node.input[0], node.input[1]]
    if op in ("MatMul", "Gemm"):
        return [node.input[0], node.output[0]]
    return list(node.input)  # Einsum


def _node_macs(node, shapes: dict) -> int | None:
    def known(shape):
        return shape is not None and all(isinstance(v, int) and v > 0 for v in shape)

    op = node.op_type
    names = _mac_tensors(node)
    got = [shapes.get(n) for n in names]
    if not all(known(g) for g in got):
        return None
    prod = lambda values: int(np.prod(values, dtype=np.int64))  # noqa: E731
    if op == "Conv":  # prod(output) * Cin/groups * kH * kW
        return prod(got[0]) * prod(got[1][1:])
    if op == "ConvTranspose":  # prod(input) * Cout/groups * kH * kW
        return prod(got[0]) * prod(got[1][1:])
    if op == "MatMul":  # prod(output) * K
        return prod(got[1]) * int(got[0][-1])
    if op == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return prod(got[1]) * int(got[0][0] if trans_a else got[0][1]) if len(got[0]) == 2 else None
    # Einsum without ellipsis: one multiply-add per point of the product space of all indices
    equation = next((attr.s.decode() for attr in node.attribute if attr.name == "equation"), "")
    lhs = equation.replace(" ", "").split("->")[0].split(",")
    if "." in equation or len(lhs) != len(got):
        return None
    sizes: dict[str, int] = {}
    for letters, shape in zip(lhs, got):
        if len(letters) != len(shape):
            return None
        for letter, size in zip(letters, shape):
            sizes[letter] = max(sizes.get(letter, 1), int(size))
    return prod(list(sizes.values())) if len(lhs) > 1 else 0


def _runtime_shapes(model, names: Sequence[str], feeds: dict) -> dict[str, list[int]]:
    """Shapes of ``names`` from one ONNX Runtime run with ``Shape`` nodes appended as outputs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    outputs = []
    for i, name in enumerate(names):
        out = f"__sqsam_shape_{i}"
        probe.graph.node.append(helper.make_node("Shape", [name], [out]))
        probe.graph.output.append(helper.make_tensor_value_info(out, TensorProto.INT64, None))
        outputs.append(out)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = session.run(outputs, {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}})
    return {name: [int(v) for v in value] for name, value in zip(names, values)}


def count_macs(model_or_path, input_shapes: dict[str, Sequence[int]] | None = None,
               feeds: dict[str, np.ndarray] | None = None) -> dict:
    """Multiply-accumulates of one forward pass, from tensor shapes.

    Shapes come from ``onnx.shape_inference`` (``input_shapes`` fixes dynamic inputs); where it
    cannot resolve them (reshapes computed at run time, as in SAM's window attention) and
    ``feeds`` are given, from one ONNX Runtime run that outputs ``Shape`` of those tensors.
    Conv: ``prod(output) * Cin/groups * kH * kW``; ConvTranspose: ``prod(input) * Cout/groups *
    kH * kW``; MatMul: ``prod(output) * K``; Gemm: ``M * N * K``; Einsum: the product of all
    index sizes. Elementwise, normalisation, softmax, resize and pooling ops are not counted.
    """
    import onnx
    from onnx import shape_inference

    if isinstance(model_or_path, (str, os.PathLike)):
        model = onnx.load(str(model_or_path), load_external_data=False)
    else:
        model = onnx.ModelProto()
        model.CopyFrom(model_or_path)
    for inp in model.graph.input:
        shape = input_shapes.get(inp.name) if input_shapes else None
        if shape is None and feeds is not None and inp.name in feeds:
            shape = feeds[inp.name].shape
        if shape is not None:
            for dim, value in zip(inp.type.tensor_type.shape.dim, shape):
                dim.Clear()
                dim.dim_value = int(value)
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    g = inferred.graph

    shapes: dict[str, list[int | None]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)

    mac_nodes = [n for n in g.node if n.op_type in MAC_OPS]
    resolved_at_runtime = 0
    missing = sorted({t for n in mac_nodes if _node_macs(n, shapes) is None for t in _mac_tensors(n)
                      if t and not (shapes.get(t) and all(isinstance(v, int) and v > 0 for v in shapes[t]))})
    if missing and feeds is not None:
        shapes.update(_runtime_shapes(model, missing, feeds))
        resolved_at_runtime = len(missing)

    by_op: dict[str, int] = {}
    unresolved: list[str] = []
    for node in mac_nodes:
        try:
            macs = _node_macs(node, shapes)
        except (IndexError, TypeError, ValueError):
            macs = None
        if macs is None:
            unresolved.append(node.name or node.op_type)
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    uncounted: dict[str, int] = {}
    for node in g.node:
        if node.op_type in UNCOUNTED_HEAVY_OPS:
            uncounted[node.op_type] = uncounted.get(node.op_type, 0) + 1
    total = sum(by_op.values())
    return {
        "method": "MACs of Conv/ConvTranspose/MatMul/Gemm/Einsum from tensor shapes (onnx.shape_inference, "
                  "unresolved shapes from one onnxruntime run); FLOPs = 2 x MACs; elementwise, normalisation, "
                  "softmax, resize and pooling not counted",
        "macs": total,
        "gflops": round(2 * total / 1e9, 4),
        "by_op_gmacs": {k: round(v / 1e9, 4) for k, v in sorted(by_op.items())},
        "shapes_resolved_at_runtime": resolved_at_runtime,
        "unresolved": unresolved[:20],
        "unresolved_count": len(unresolved),
        "uncounted_ops": uncounted,
    }


# ------------------------------------------------------------------------------------------------
# Synthetic images
# ------------------------------------------------------------------------------------------------


@dataclass
class Shape:
    kind: str  # "ellipse" or "rect", axis-aligned
    cx: float
    cy: float
    rx: float
    ry: float

    def contains(self, x: float, y: float) -> bool:
        dx, dy = (x - self.cx) / self.rx, (y - self.cy) / self.ry
        return dx * dx + dy * dy <= 1.0 if self.kind == "ellipse" else abs(dx) <= 1.0 and abs(dy) <= 1.0


@dataclass
class SyntheticImage:
    width: int
    height: int
    jpeg: bytes
    shapes: list[Shape] = field(default_factory=list)

    @property
    def target(self) -> Shape:
        """The shape drawn last (on top): clicks inside it are on the object."""
        return self.shapes[-1]


def synthetic_rgb(width: int, height: int, seed: int = 0) -> tuple[np.ndarray, list[Shape]]:
    """Smooth colour noise with flat ellipses and rectangles and a fine grain, ``(H, W, 3)`` uint8."""
    import cv2

    rng = np.random.default_rng(seed)
    grid = rng.integers(40, 210, size=(max(2, height // 120), max(2, width // 120), 3), dtype=np.uint8)
    rgb = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    shapes = []
    for i in range(5):
        kind = "ellipse" if i % 2 == 0 else "rect"
        cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
        rx, ry = rng.uniform(0.07, 0.18) * width, rng.uniform(0.07, 0.18) * height
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if kind == "ellipse":
            cv2.ellipse(rgb, (int(cx), int(cy)), (max(1, int(rx)), max(1, int(ry))), 0, 0, 360, color, -1)
        else:
            cv2.rectangle(rgb, (int(cx - rx), int(cy - ry)), (int(cx + rx), int(cy + ry)), color, -1)
        shapes.append(Shape(kind, cx, cy, max(1.0, rx), max(1.0, ry)))
    for r0 in range(0, height, 256):  # grain, in row blocks to keep memory low for 12 MP
        block = rgb[r0:r0 + 256]
        noise = rng.integers(-6, 7, size=block.shape, dtype=np.int16)
        block[...] = np.clip(block.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return rgb, shapes


def synthetic_jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> SyntheticImage:
    from PIL import Image

    rgb, shapes = synthetic_rgb(width, height, seed)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return SyntheticImage(width, height, buf.getvalue(), shapes)


def click_sequence(image: SyntheticImage, n: int, rng: np.random.Generator) -> list[tuple[float, float, bool]]:
    """A plausible interaction: first click near the target's centre, then clicks around it,
    positive when inside the target and negative outside."""
    t = image.target
    clicks = []
    for i in range(n):
        if i == 0:
            x, y = t.cx + rng.uniform(-0.3, 0.3) * t.rx, t.cy + rng.uniform(-0.3, 0.3) * t.ry
        else:
            x, y = t.cx + rng.uniform(-1.4, 1.4) * t.rx, t.cy + rng.uniform(-1.4, 1.4) * t.ry
        x = float(np.clip(x, 0, image.width - 1))
        y = float(np.clip(y, 0, image.height - 1))
        clicks.append((x, y, t.contains(x, y)))
    return clicks


# ------------------------------------------------------------------------------------------------
# sqsam measurements
# ------------------------------------------------------------------------------------------------


def _load_model(config: BenchConfig, threads: int | None, timed: bool = True):
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
            totals.append(_ms(time.perf_counter() - start))
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
        stages["decode"].append(_ms(t1 - t0))
        stages["prepare"].append(_ms(t2 - t1))
        stages["predict"].append(_ms(t3 - t2))
        stages["model"].append(sum(backend.since(mark)))
        stages["total"].append(_ms(t3 - t0))
        stages["no_decode"].append(_ms(t3 - t1))
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
        times.append(_ms(time.perf_counter() - start))
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
        model = _load_model(config, threads, timed=False)
        model.predict(decode_image_bytes(images[0].jpeg), cache_key="bench:tp:warm")
        latencies: list[float] = []
        lock = threading.Lock()

        def task(i: int) -> int:
            start = time.perf_counter()
            rgb = decode_image_bytes(images[i % len(images)].jpeg)
            found = model.automask(rgb, cache_key=f"bench:tp:{workers}:{i}")
            with lock:
                latencies.append(_ms(time.perf_counter() - start))
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


# ------------------------------------------------------------------------------------------------
# Label Studio over HTTP
# ------------------------------------------------------------------------------------------------


def _import_label_studio():
    try:
        import sqsam_label_studio.app as app_module
    except ImportError:
        here = Path(__file__).resolve().parents[1] / "integrations" / "label_studio"
        if not (here / "sqsam_label_studio").is_dir():
            raise
        sys.path.insert(0, str(here))
        import sqsam_label_studio.app as app_module
    from sqsam_label_studio.images import ImageLoader

    return app_module, ImageLoader


def bench_label_studio(model, config: BenchConfig, image: SyntheticImage, batch_images: Sequence[SyntheticImage],
                       log: Log) -> dict:
    try:
        app_module, ImageLoader = _import_label_studio()
        import requests
        from werkzeug.serving import WSGIRequestHandler, make_server
    except ImportError as exc:
        return {"status": "skipped", "reason": f"Label Studio backend not importable: {exc}"}

    class QuietHandler(WSGIRequestHandler):
        def log(self, *args, **kwargs):  # no per-request access log in the bench output
            pass

    import logging

    ls_logger = logging.getLogger("sqsam_label_studio")
    old_level = ls_logger.level
    ls_logger.setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="sqsam-bench-ls-") as root:
        Path(root, "interactive.jpg").write_bytes(image.jpeg)
        names = []
        for r in range(config.ls_batch_requests + 1):
            for t in range(config.ls_batch_tasks):
                name = f"batch-{r}-{t}.jpg"
                Path(root, name).write_bytes(batch_images[(r * config.ls_batch_tasks + t) % len(batch_images)].jpeg)
                names.append(name)
        loader = ImageLoader(document_root=root)
        settings = app_module.Settings()
        app = app_module.create_app(model=model, loader=loader, settings=settings)
        server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
        thread = threading.Thread(target=server.serve_forever, name="sqsam-bench-ls", daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_port}/predict"
        session = requests.Session()
        try:
            return _ls_requests(session, url, config, image, names)
        except (requests.RequestException, RuntimeError) as exc:
            return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            session.close()
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            ls_logger.setLevel(old_level)


def _ls_post(session, url: str, payload: dict) -> tuple[float, float | None, dict]:
    body = json.dumps(payload)
    start = time.perf_counter()
    response = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=120)
    elapsed = _ms(time.perf_counter() - start)
    if response.status_code != 200:
        raise RuntimeError(f"/predict answered HTTP {response.status_code}: {response.text[:200]}")
    server_ms = response.headers.get("X-Sqsam-Elapsed-Ms")
    return elapsed, float(server_ms) if server_ms else None, response.json()


def _ls_interactive_payload(image: SyntheticImage, clicks, task_id: int) -> dict:
    result = []
    for x, y, positive in clicks:
        result.append({
            "type": "keypointlabels", "from_name": "kp", "to_name": "image",
            "original_width": image.width, "original_height": image.height, "image_rotation": 0,
            "value": {"x": (x + 0.5) / image.width * 100.0, "y": (y + 0.5) / image.height * 100.0,
                      "width": 0.5, "keypointlabels": ["Object"]},
            "is_positive": bool(positive),
        })
    return {
        "tasks": [{"id": task_id, "data": {"image": "/data/local-files/?d=interactive.jpg"}}],
        "project": "1.1700000000",
        "label_config": LABEL_CONFIG,
        "params": {"login": None, "password": None, "context": {"result": result}},
    }


def _ls_requests(session, url: str, config: BenchConfig, image: SyntheticImage, names: list[str]) -> dict:
    rng = np.random.default_rng(3)
    # warm-up: fetch + decode + prepare the interactive image (Label Studio's first click)
    first_ms, _, _ = _ls_post(session, url, _ls_interactive_payload(image, click_sequence(image, 1, rng), 1))
    rounds, server, regions = [], [], 0
    for _ in range(config.ls_interactions):
        clicks = click_sequence(image, config.clicks_per_interaction, rng)
        for n in range(1, len(clicks) + 1):  # Label Studio sends every click of the object each time
            elapsed, server_ms, data = _ls_post(session, url, _ls_interactive_payload(image, clicks[:n], 1))
            rounds.append(elapsed)
            if server_ms is not None:
                server.append(server_ms)
            regions += len(data["results"][0]["result"])
    interactive = {**summarize(rounds), "server_p50_ms": summarize(server)["p50_ms"],
                   "first_request_ms": round(first_ms, 1), "regions_returned": regions}

    batches, batch_server = [], []
    tasks_per = config.ls_batch_tasks
    for r in range(config.ls_batch_requests + 1):
        tasks = [{"id": 100 + r * tasks_per + t, "data": {"image": f"/data/local-files/?d={names[r * tasks_per + t]}"}}
                 for t in range(tasks_per)]
        payload = {"tasks": tasks, "project": "1.1700000000", "label_config": LABEL_CONFIG, "params": {}}
        elapsed, server_ms, data = _ls_post(session, url, payload)
        if len(data.get("results", [])) != tasks_per:
            raise RuntimeError(f"batch /predict returned {len(data.get('results', []))} results for {tasks_per} tasks")
        if r == 0:
            continue  # warm-up
        batches.append(elapsed)
        if server_ms is not None:
            batch_server.append(server_ms)
    batch = {**summarize(batches), "tasks_per_request": tasks_per,
             "per_task_p50_ms": round(summarize(batches)["p50_ms"] / tasks_per, 2) if batches else None,
             "server_p50_ms": summarize(batch_server)["p50_ms"]}
    return {
        "status": "ok",
        "method": "in-process Flask app (create_app) on werkzeug make_server(threaded) at 127.0.0.1, requests "
                  "keep-alive client, images from LOCAL_FILES_DOCUMENT_ROOT; label config BrushLabels + smart "
                  "KeyPointLabels; every request carries all clicks so far (as Label Studio sends them)",
        "interactive": interactive,
        "batch": batch,
    }


# ------------------------------------------------------------------------------------------------
# The whole run
# ------------------------------------------------------------------------------------------------


def run_bench(config: BenchConfig, log: Log | None = None) -> dict:
    """Run every section; returns the report (see docs/benchmarks.md for the fields)."""
    from sqsam_core import __version__

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
    rss_before = _proc_status("VmRSS")

    log(f"generating synthetic images {', '.join(f'{w}x{h}' for w, h in config.sizes)}")
    images = [synthetic_jpeg(w, h, seed=i) for i, (w, h) in enumerate(config.sizes)]
    main_image = images[0]
    extra = [synthetic_jpeg(main_image.width, main_image.height, seed=10 + i) for i in range(3)]
    pool = [main_image] + extra

    log(f"measuring the machine's float32 peak (numpy matmul n={config.matmul_size})")
    report["peak"] = measure_peak_gflops(config.matmul_size, config.matmul_repeats)

    peak_reset = _reset_peak_rss()
    start = time.perf_counter()
    model = _load_model(config, config.threads)
    load_ms = _ms(time.perf_counter() - start)
    from sqsam_core.predictor import default_model_path

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
        "rss_after_load_mb": _proc_status("VmRSS"),
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
        report["label_studio"] = bench_label_studio(model, config, main_image, pool, log)
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
        "peak_rss_mb": _proc_status("VmHWM") if peak_reset else _ru_maxrss_mb(),
        "ru_maxrss_mb": _ru_maxrss_mb(),
    }

    report["sam_baseline"] = _sam_section(config, report, main_image, cores, log)
    report["memory"]["ru_maxrss_after_baseline_mb"] = _ru_maxrss_mb()
    report["targets"] = evaluate_targets(report)
    report["machine"]["loadavg_end"] = _loadavg()
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _sam_section(config: BenchConfig, report: dict, image: SyntheticImage, cores: int, log: Log) -> dict:
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
    from sqsam_core import bench_sam
    from sqsam_core.imageio import decode_image_bytes

    cache_dir = Path(config.sam_cache_dir) if config.sam_cache_dir else bench_sam.default_cache_dir()
    rng = np.random.default_rng(4)
    interactions = [click_sequence(image, config.clicks_per_interaction, rng)
                    for _ in range(max(2, config.interactions // 2))]
    variants = bench_sam.run_baseline(config.sam_variants, cache_dir, decode_image_bytes(image.jpeg), interactions,
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


# ------------------------------------------------------------------------------------------------
# Table
# ------------------------------------------------------------------------------------------------


def _f(value, fmt: str = "{:.1f}", none: str = "-") -> str:
    return none if value is None else fmt.format(value)


def format_report(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"sqsam bench ({report['mode']}) {report['date_utc']}",
        f"machine: {m['cpu_model']}, {m['usable_cores']} usable cores ({m['physical_cores'] or '?'} physical), "
        f"{m['memory_gb'] or '?'} GB; onnxruntime {m['onnxruntime']}, numpy {m['numpy']} ({m['blas'] or 'BLAS ?'}); "
        f"load avg {m['loadavg_start']} -> {m.get('loadavg_end')}",
    ]
    mod = report["model"]
    lines.append(f"model: {mod['model_version']} ({mod['file_mb']} MB, input {mod['input_size']}, "
                 f"{mod['num_masks']} masks, stride {mod['stride']}), ORT threads: {mod['ort_threads']}, "
                 f"load {mod['load_ms']:.0f} ms")
    rows: list[tuple[str, str, str, str]] = []
    pc = report["per_click"]
    rows.append((f"per click, cached {pc['image']['width']}x{pc['image']['height']} image ({pc['clicks']} clicks)",
                 _f(pc["p50_ms"]), _f(pc["p95_ms"]),
                 f"model {_f(pc['model_only']['p50_ms'])} + pre/post {_f(pc['pre_post_p50_ms'])}"))
    for fc in report["first_click"]:
        rows.append((f"first click, new {fc['label']} JPEG ({fc['n']}x)", _f(fc["p50_ms"]), _f(fc["p95_ms"]),
                     f"decode {_f(fc['decode_p50_ms'])} + prepare {_f(fc['prepare_p50_ms'])} + "
                     f"predict {_f(fc['predict_p50_ms'])} (model {_f(fc['model_p50_ms'])})"))
    am = report["automask"]
    rows.append((f"automask per {am['image']['width']}x{am['image']['height']} image ({am['n']}x)", _f(am["p50_ms"]),
                 _f(am["p95_ms"]), f"{am['model_passes_mean']:.1f} model passes, {am['objects_mean']:.1f} objects"))
    ls = report.get("label_studio", {})
    if ls.get("status") == "ok":
        it, bt = ls["interactive"], ls["batch"]
        rows.append((f"Label Studio /predict interactive ({it['n']}x)", _f(it["p50_ms"]), _f(it["p95_ms"]),
                     f"server {_f(it['server_p50_ms'])}"))
        rows.append((f"Label Studio batch pre-annotation, {bt['tasks_per_request']} tasks ({bt['n']}x)",
                     _f(bt["p50_ms"]), _f(bt["p95_ms"]), f"{_f(bt['per_task_p50_ms'])} ms/task"))
    width = max(len(r[0]) for r in rows)
    lines.append("")
    lines.append(f"{'latency':<{width}}  {'p50 ms':>8}  {'p95 ms':>8}  breakdown (p50 ms)")
    for name, p50, p95, note in rows:
        lines.append(f"{name:<{width}}  {p50:>8}  {p95:>8}  {note}")
    if ls.get("status") != "ok":
        lines.append(f"Label Studio: {ls.get('status')} ({ls.get('reason')})")

    lines.append("")
    for tp in report["throughput"]:
        lines.append(f"throughput, decode + automask: {tp['workers']} worker(s) x {tp['ort_threads_per_worker']} ORT "
                     f"thread(s): {tp['images_per_s']:.2f} images/s ({tp['images']} images)")
    fl, peak = report.get("flops", {}), report["peak"]
    if fl.get("macs"):
        lines.append(f"model cost: {fl['gflops']:.2f} GFLOPs/pass ({fl['macs'] / 1e9:.2f} GMACs); machine peak "
                     f"{peak['gflops']:.1f} GFLOP/s (numpy sgemm n={peak['n']}); achieved "
                     f"{_f(pc.get('achieved_gflops'))} GFLOP/s = {_f(100 * pc['fraction_of_peak'] if pc.get('fraction_of_peak') is not None else None)}% of peak")
    mem = report["memory"]
    lines.append(f"peak RSS: {mem['peak_rss_mb']} MB (model loaded: {mod['rss_after_load_mb']} MB)")
    prof = report.get("profile")
    if prof and prof.get("ops"):
        ops = ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in prof["ops"][:6])
        lines.append(f"model pass by op (ORT profile, {prof['kernel_ms_per_pass']} ms kernels): {ops}")

    sam = report.get("sam_baseline", {})
    lines.append("")
    if sam.get("status") == "ok":
        ours = sam["ours"]
        lines.append(f"SAM baseline at {sam['image']['width']}x{sam['image']['height']}, {sam['threads']} ORT threads "
                     f"(random weights, speed only)")
        lines.append(f"{'model (ms)':<28}  {'first click':>11}  {'per click':>9}  {'5 clicks':>9}  cost")
        lines.append(f"{'sqsam ' + mod['model_version']:<28}  {ours['first_click_ms']:>11.1f}  {ours['per_click_ms']:>9.1f}  "
                     f"{ours['five_click_ms']:>9.1f}  {_f(fl.get('gflops'), '{:.2f}')} GFLOP per pass")
        for name, res in sam["variants"].items():
            if res.get("status") != "ok":
                lines.append(f"{name:<28}  {res.get('status')}: {res.get('reason')}")
                continue
            r = sam["ratios"][name]
            enc_gf = 2 * res["encoder_gmacs"] if res.get("encoder_gmacs") is not None else None
            dec_gf = 2 * res["decoder_gmacs"] if res.get("decoder_gmacs") is not None else None
            lines.append(f"{name:<28}  {res['first_click_ms']:>11.1f}  {res['per_click_ms']:>9.1f}  "
                         f"{res['five_click_ms']:>9.1f}  encoder {res['encoder']['p50_ms']:.0f} ms / "
                         f"{_f(enc_gf, '{:.1f}')}, decoder {_f(dec_gf, '{:.2f}')} GFLOP")
            lines.append(f"{'  ratio (theirs / ours)':<28}  {_f(r['first_click'], '{:.1f}x'):>11}  "
                         f"{_f(r['per_click'], '{:.1f}x'):>9}  {_f(r['five_click'], '{:.1f}x'):>9}")
    else:
        lines.append(f"SAM baseline: {sam.get('status', 'skipped')} ({sam.get('reason')})")

    lines.append("")
    lines.append("targets:")
    for t in report["targets"]:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"  {t['description']:<42} {_f(t['value'], '{:.1f}'):>8}  target {t['target']:<8} {verdict}")
    lines.append(f"({report['seconds']:.0f} s)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


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
        from sqsam_core.bench_sam import VARIANTS

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
    from sqsam_core.cli import positive_int as _positive_int

    """Add ``sqsam bench`` (called by :func:`sqsam_core.cli.register_plugins`)."""
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
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="ONNX Runtime threads for the interactive model and SAM (default: one per core)")
    p.add_argument("--sizes", metavar="WxH,...", default=None,
                   help="new-image sizes for first-click latency; the first is also used for per-click, automask, "
                        "throughput and Label Studio (default 1152x864,4000x3000)")
    p.add_argument("--repeats", type=_positive_int, default=None, metavar="N",
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
