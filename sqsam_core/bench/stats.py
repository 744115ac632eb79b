"""Duration statistics of ``sqsam bench``: percentiles of millisecond samples."""

from __future__ import annotations

from typing import Sequence

import numpy as np


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


def ms(seconds: float) -> float:
    return seconds * 1000.0


def size_label(width: int, height: int) -> str:
    mp = width * height / 1e6
    return f"{mp:.0f}MP" if mp >= 0.95 else f"{width}x{height}"

