"""Batched PyTorch mirrors of ``sqsam_core.geometry``'s click functions, for training on a GPU.

``sqsam_core.geometry`` owns the click rules (serving and evaluation run them on single numpy
masks, without torch). A training step on a GPU applies them to a whole batch after every
corrective round; done per sample on the CPU, that bounds the step. The functions here compute
the same results for a batch in a few tensor operations on any device, and the tests compare
them with ``geometry`` pixel for pixel:

* :func:`click_tensor` - ``geometry.click_maps`` for a batch;
* :func:`next_clicks` - ``geometry.next_click`` (the RITM corrective-click rule) for a batch,
  with an exact Euclidean distance transform (:func:`squared_distance_to_outside`), as
  ``geometry.interior_point``'s ``cv2.DIST_MASK_PRECISE``.

Coordinates: clicks are ``(x, y, positive)`` in model pixels (x = column, y = row); masks are
``(B, H, W)`` bool tensors.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from sqsam_core import geometry

Click = tuple[float, float, bool]
ROW_CHUNK = 8  # rows per step of the column pass: (B, H, ROW_CHUNK, W) int32 temporaries


def click_tensor(clicks: list[list[Click]], size: int, radius: float, device="cpu") -> torch.Tensor:
    """(B, 2, size, size) float32 [positive, negative] click disks for each sample's clicks.

    ``geometry.click_maps`` for every sample: the same float64 test ``(col - x)^2 + (row - y)^2
    <= radius^2`` on integer pixel centres, so the same pixels.
    """
    batch, longest = len(clicks), max((len(c) for c in clicks), default=0)
    maps = torch.zeros(batch, 2, size, size, dtype=torch.bool, device=device)
    if longest == 0:
        return maps.float()
    table = torch.full((batch, longest, 3), float("nan"), dtype=torch.float64)  # NaN: no click, never inside
    for i, sample_clicks in enumerate(clicks):
        if sample_clicks:
            table[i, : len(sample_clicks)] = torch.tensor(sample_clicks, dtype=torch.float64)
    table = table.to(device)
    pixels = torch.arange(size, dtype=torch.float64, device=device)
    r2 = float(radius) * float(radius)
    for n in range(longest):
        x, y, positive = (table[:, n, k, None, None] for k in range(3))
        disk = (pixels[None, None, :] - x) ** 2 + (pixels[None, :, None] - y) ** 2 <= r2  # (B, size, size)
        maps[:, 0] |= disk & (positive == 1)
        maps[:, 1] |= disk & (positive == 0)
    return maps.float()


def squared_distance_to_outside(region: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool -> (B, H, W) int32: each pixel's squared Euclidean distance to the nearest
    pixel outside the region, the image border counting as outside (0 outside the region).

    Exact, in two separable passes (the decomposition behind Felzenszwalb-Huttenlocher): the
    distance to the nearest outside pixel along the row, then the minimum over rows of
    ``(row - row')^2 + d_row(row', col)^2``.
    """
    framed = torch.nn.functional.pad(region.to(torch.uint8), (1, 1, 1, 1)).bool()  # a frame of outside pixels
    batch, height, width = framed.shape
    outside = ~framed
    cols = torch.arange(width, device=region.device)
    left = torch.where(outside, cols, -1).cummax(dim=2).values  # nearest outside column at or left of each
    right = width - 1 - torch.where(outside.flip(2), cols, -1).cummax(dim=2).values.flip(2)  # ... at or right
    along_row = torch.minimum(cols - left, right - cols).to(torch.int32)  # the frame bounds both
    rows = torch.arange(height, device=region.device, dtype=torch.int32)
    best = torch.full_like(along_row, torch.iinfo(torch.int32).max)
    for start in range(0, height, ROW_CHUNK):
        source = slice(start, min(start + ROW_CHUNK, height))
        gap = (rows[:, None] - rows[None, source]) ** 2  # (H, chunk): (row - row')^2
        candidates = gap[None, :, :, None] + along_row[:, None, source, :] ** 2  # (B, H, chunk, W)
        best = torch.minimum(best, candidates.min(dim=2).values)
    return best[:, 1:-1, 1:-1]


def interior_points(regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``geometry.interior_point`` for a batch: (B, H, W) bool -> x, y (int64) and depth (float32,
    the distance to outside; 0 for an empty region), each (B,). Ties go to the first pixel in
    row-major order, as ``numpy.argmax`` (and ``torch.argmax``) pick the first maximum."""
    # float32 like OpenCV's; its square root may differ by 1 ulp, but both are monotone functions
    # of the same exact integer squared distances, so the argmax and the fn/fp comparison agree
    depth = squared_distance_to_outside(regions).float().sqrt()
    flat = depth.flatten(1).argmax(dim=1)
    width = regions.shape[2]
    return flat % width, flat // width, depth.flatten(1).gather(1, flat[:, None])[:, 0]


def next_clicks(pred: torch.Tensor, gt: torch.Tensor, ignore: torch.Tensor | None = None) -> list[Click | None]:
    """``geometry.next_click`` for a batch of (B, H, W) bool masks: the RITM corrective click for
    each sample (``(x, y, positive)``, or None where the prediction has no error)."""
    fn = gt & ~pred
    fp = pred & ~gt
    if ignore is not None:
        fn &= ~ignore
        fp &= ~ignore
    x, y, depth = interior_points(torch.cat([fn, fp]))
    batch = pred.shape[0]
    depth = torch.where(depth > 0, depth, -1.0)  # an empty region never wins
    fn_depth, fp_depth = depth[:batch], depth[batch:]
    positive = fn_depth > fp_depth  # a tie goes to the negative click, as in geometry
    click_x = torch.where(positive, x[:batch], x[batch:]).tolist()
    click_y = torch.where(positive, y[:batch], y[batch:]).tolist()
    none = ((fn_depth < 0) & (fp_depth < 0)).tolist()
    return [None if none[i] else (float(click_x[i]), float(click_y[i]), bool(p))
            for i, p in enumerate(positive.tolist())]


def time_click_rules(batch: int, size: int, device: str = "cpu", repeats: int = 5, seed: int = 0) -> dict:
    """Time the corrective-click rule on ``batch`` shifted-ellipse error masks of ``size x size``:
    ``geometry.next_click`` one sample at a time (plain and on 4 threads, as ``train --click-rule
    cpu``) against :func:`next_clicks` on ``device`` (median of ``repeats`` after a warm-up).
    Returns milliseconds and how many of the batch's clicks the two rules agree on."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    gt = np.stack([((cols - rng.uniform(0.3, 0.7) * size) / (rng.uniform(0.1, 0.3) * size)) ** 2
                   + ((rows - rng.uniform(0.3, 0.7) * size) / (rng.uniform(0.1, 0.3) * size)) ** 2 < 1
                   for _ in range(batch)])
    pred = np.stack([np.roll(g, tuple(rng.integers(-15, 16, 2)), (0, 1)) for g in gt])

    def clock(fn):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, (time.perf_counter() - start) * 1e3

    expected, serial_ms = clock(lambda: [geometry.next_click(p, g) for p, g in zip(pred, gt)])
    with ThreadPoolExecutor(4) as pool:
        _, threaded_ms = clock(lambda: list(pool.map(lambda pg: geometry.next_click(*pg), zip(pred, gt))))
    pred_t, gt_t = torch.from_numpy(pred).to(device), torch.from_numpy(gt).to(device)
    next_clicks(pred_t, gt_t)  # warm-up
    runs = [clock(lambda: next_clicks(pred_t, gt_t)) for _ in range(repeats)]
    def pixel(click: Click | None):  # geometry's clicks are numpy scalars; None: no error
        return None if click is None else (int(click[0]), int(click[1]), bool(click[2]))

    same = sum(pixel(a) == pixel(b) for a, b in zip(expected, runs[-1][0]))
    return {"batch": batch, "size": size, "device": device, "cpu_serial_ms": round(serial_ms, 1),
            "cpu_4_threads_ms": round(threaded_ms, 1),
            "batched_ms": round(float(np.median([ms for _, ms in runs])), 1), "same_click": same}


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="time the corrective-click rule: per sample on the CPU vs batched")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=320, help="mask side, model pixels")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(json.dumps(time_click_rules(args.batch, args.size, args.device)))
