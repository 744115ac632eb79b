"""The machine ``sqsam bench`` runs on: CPU and library versions, float32 matmul peak, memory marks."""

from __future__ import annotations

import os
import platform
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np


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
        "loadavg_start": loadavg(),
    }


def loadavg() -> list[float] | None:
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



def proc_status(key: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MB; None off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M)
    return round(int(match.group(1)) / 1024.0, 1) if match else None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def ru_maxrss_mb() -> float:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(value / (1024.0 * 1024.0) if sys.platform == "darwin" else value / 1024.0, 1)

