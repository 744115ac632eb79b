"""Train the early-fusion SqueezeSAM network. Resumable; the same command runs on CPU or CUDA.

    python -m sqsam_train.train --run-dir runs/v1 --steps 6000

Every ``--ckpt-minutes`` it writes ``RUN_DIR/last.ckpt`` (weights, optimiser, schedule, step and
every RNG state), so re-running the same command continues exactly where it stopped; SIGTERM ends
the run after the current step with a checkpoint. Metrics go to ``RUN_DIR/log.jsonl`` (with the
seconds each step waited for samples, ``data_s``, and spent on itself, ``step_s``) and a progress bar.

Per step (RITM-style iterative training): draw a batch of samples (data.SampleMaker), run the
network 0-16 times without gradients adding a corrective click each time at the error region
(``sqsam_core.geometry.next_click``, the evaluation rule) and feeding the previous probability
back (never for zero-prompt samples: the saliency pass has no previous mask at inference);
with ``--corrupt-share`` some previous masks are then damaged and given the click that repairs
them (:func:`damage_previous_masks`; ``--spill-share`` of them a large spill, :func:`spilled_mask`); then one
forward/backward pass. Loss: BCE + Dice
on hypothesis 0 for the target, plus, for an ambiguous prompt (``contract.is_ambiguous_prompt``:
exactly one click, no box), the meanings of ``contract.HYPOTHESES``: a click on a known part
(``Sample.part``) trains hypothesis 0 on the whole object and hypothesis 1 on the part; any other
single click trains hypotheses 1 and 2 on the target at weight ``OTHER_HYPOTHESIS_WEIGHT``. Plus
MSE between the IoU head and each hypothesis's true IoU with what it is trained for. A model
without meanings (``args.hypotheses`` empty: best-of-K, as v22 was trained and as ``sqsam finetune``
keeps such a base) trains the best of its K hypotheses on an ambiguous prompt instead, and the
rounds present the hypothesis its IoU head scores best, as the runtime does. Options:
``--boundary-weight`` weights
a band around every target's boundary up; ``--coarse-band`` ignores one on sets with coarse masks.

On a GPU: ``--workers N`` draws samples in N processes and runs the rounds' per-sample work on N
threads (:class:`ParallelSamples`); clicks are rendered and the corrective-click rule runs batched
on the device (``batched_clicks``, the same results as ``sqsam_core.geometry``); ``--minutes M``
runs the cosine over M minutes of wall clock and stops there; ``sqsam_train.pack`` carries the
training split to a machine without the data.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sqsam_core import geometry
from sqsam_core.config import DATA_HELP, data_root
from sqsam_core.contract import (
    DEFAULT_CLICK_RADIUS,
    DEFAULT_INPUT_SIZE,
    DEFAULT_MEAN,
    DEFAULT_STD,
    HYPOTHESES,
    choose_hypothesis,
    is_ambiguous_prompt,
)
from sqsam_train.batched_clicks import click_tensor, next_clicks
from sqsam_train.data import SET_WEIGHTS, Sample, SampleMaker, load_training_data, set_name
from sqsam_train.network import build_network, read_weights

# Corrective rounds before the gradient pass. v4 adds 12 and 16 so the network also sees the
# many-click regime NoC@90 is measured in (an evaluation runs up to 20 clicks).
#: Sample modes whose prompt the rounds leave as drawn (no corrective click, no previous mask, no
#: damage): the zero-prompt saliency pass, and a single click on a part ("part": part and whole).
FIXED_PROMPT_MODES = ("salient", "part")
#: Weight of the hypotheses without a meaning of their own for a single click (trained on the target).
OTHER_HYPOTHESIS_WEIGHT = 0.25
ROUND_CHOICES = (0, 1, 2, 3, 4, 6, 9, 12, 16)
ROUND_PROBS = (0.12, 0.17, 0.17, 0.13, 0.1, 0.1, 0.09, 0.06, 0.06)


def parse_set_weights(text: str) -> dict[str, float]:
    """``"ECSSD=0.4,COCO_MVal=0.2,..."`` -> ``{"ECSSD": 0.4, ...}``: every training set, weights > 0."""
    weights = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not SET=WEIGHT") from None
    if set(weights) != set(SET_WEIGHTS) or min(weights.values()) <= 0:
        raise argparse.ArgumentTypeError(f"give a weight > 0 for each of {', '.join(SET_WEIGHTS)}")
    return weights


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=data_root(), help=f"data root holding train/ (default {DATA_HELP})")
    p.add_argument("--run-dir", type=Path, default=Path("runs/v1"))
    p.add_argument("--steps", type=int, default=6000, help="total optimiser steps (the schedule's length)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256, help="training window side, model pixels")
    p.add_argument("--input-size", type=int, default=DEFAULT_INPUT_SIZE, help="S: the inference input side")
    p.add_argument("--click-radius", type=float, default=DEFAULT_CLICK_RADIUS)
    p.add_argument("--salient-share", type=float, default=0.12, help="share of zero-prompt (salient object) samples")
    p.add_argument("--corrupt-share", type=float, default=0.0,
                   help="share of samples with a previous mask whose mask is damaged before the last click")
    p.add_argument("--spill-share", type=float, default=0.0,
                   help="share of the damaged previous masks that are a large spill around the object "
                        "(train.spilled_mask) instead of a local error")
    p.add_argument("--boundary-weight", type=float, default=0.0,
                   help="extra BCE weight on pixels within BOUNDARY_BAND px of the target's boundary (0: plain BCE)")
    p.add_argument("--coarse-band", type=int, default=0,
                   help="ignore pixels within this many px of the target boundary on COARSE_MASK_SETS samples (0: off)")
    p.add_argument("--zoom-at-serving-scale", action="store_true",
                   help="zoom-in samples at the scale serving shows them (view's longer side S, a --crop window "
                        "of it) instead of the whole view shrunk into the window (v1-v6)")
    p.add_argument("--set-weights", type=parse_set_weights, default=None, metavar="SET=W,...",
                   help="how often each training set is drawn "
                        f"(default {','.join(f'{k}={v}' for k, v in SET_WEIGHTS.items())})")
    p.add_argument("--refine", action="store_true",
                   help="add the stride-1 refinement stage (network.RefineStage; an --init without it "
                        "starts it as the identity)")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--backbone-lr-scale", type=float, default=0.3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="after warm-up: cosine to 2 %% of --lr over --steps, or constant --lr (for averaging "
                        "checkpoints, sqsam_train.average)")
    p.add_argument("--save-every", type=int, default=500, help="keep a stepNNNNNN.ckpt every this many steps")
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--stop-after-minutes", type=float, default=None,
                   help="exit cleanly (with a checkpoint) after this long")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=0,
                   help="processes drawing samples and threads running the corrective-click rounds' per-sample "
                        "work (0: all in the main process, v1-v17's exact random stream); for GPU machines")
    p.add_argument("--click-rule", choices=("auto", "device", "cpu"), default="auto",
                   help="where the corrective-click rule runs: batched on the device (batched_clicks; exact, "
                        "but brute force: slow on a CPU) or per sample on the CPU; auto: device on CUDA")
    p.add_argument("--minutes", type=float, default=None,
                   help="a wall-clock budget: the cosine runs over this many minutes of training instead of "
                        "--steps, and the run ends when they are spent (a fixed-time run on a GPU machine)")
    p.add_argument("--amp", action="store_true",
                   help="run the network's passes in bfloat16 autocast (weights, optimiser and loss stay float32); "
                        "for GPUs with bfloat16 tensor cores and CPUs with AVX512-BF16 or AMX")
    p.add_argument("--part-weight", type=float, default=1.0,
                   help="weight of hypothesis 1's loss (the part) on a click on a known part")
    p.add_argument("--part-click-share", type=float, default=0.0,
                   help="share of part samples kept at their single click whatever the rounds (mode 'part')")
    p.add_argument("--occlude-share", type=float, default=0.0,
                   help="share of prompted samples with another object pasted over part of the target")
    p.add_argument("--single-click-share", type=float, default=None,
                   help="share of steps with no corrective rounds, where single clicks (part or whole) are trained "
                        f"(default {ROUND_PROBS[0]})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None,
                   help="start from these weights (a .ckpt, or a weights-only .pt) instead of ImageNet")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def map_samples(fn, items, threads: ThreadPoolExecutor | None = None) -> list:
    """``[fn(x) for x in items]``, on ``threads`` when given (the per-sample work is numpy/OpenCV,
    which releases the GIL); the results are the same either way."""
    return list(threads.map(fn, items)) if threads is not None else [fn(x) for x in items]


def normalized_image(sample: Sample) -> np.ndarray:
    """(3, crop, crop) float32 normalised image, exact zeros on padding as at inference."""
    chw = geometry.normalize_image(sample.image, DEFAULT_MEAN, DEFAULT_STD)
    chw[:, ~sample.valid] = 0
    return chw


def image_tensor(samples: list[Sample], threads: ThreadPoolExecutor | None = None) -> torch.Tensor:
    """(B, 3, crop, crop) normalised images, exact zeros on padding as at inference."""
    return torch.from_numpy(np.stack(map_samples(normalized_image, samples, threads)))


def upsample(logits: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def aims_at_part(sample: Sample) -> bool:
    """True when the sample's corrective clicks aim at the clicked part (granularity "part")."""
    return sample.part is not None and bool(np.array_equal(sample.target, sample.part))


def chosen_probability(logits: torch.Tensor, iou: torch.Tensor, clicks: list[list], samples: list[Sample],
                       size: int, hypotheses: tuple[str, ...] = HYPOTHESES) -> torch.Tensor:
    """(B, 1, size, size) probability of the hypothesis the runtime would present (granularity
    "part" for samples that aim at a part, "whole" otherwise) in a model whose hypotheses mean
    ``hypotheses`` (empty: best-of-K)."""
    iou = iou.cpu()
    picks = [choose_hypothesis(iou[i].numpy(), len(clicks[i]), samples[i].box is not None,
                               "part" if aims_at_part(samples[i]) else "whole", hypotheses)
             for i in range(len(samples))]
    chosen = logits[torch.arange(len(samples)), picks][:, None]
    return torch.sigmoid(upsample(chosen, size))


def add_corrective_clicks(prob: torch.Tensor, samples: list[Sample], clicks: list[list],
                          threads: ThreadPoolExecutor | None = None) -> None:
    """Append the RITM next click (evaluation rule) for every sample whose prediction has errors.
    ``prob`` is (B, 1, H, W) on the CPU; each sample's list in ``clicks`` is touched by one thread only."""
    def correct(i: int) -> None:
        if samples[i].mode not in FIXED_PROMPT_MODES:
            append_next_click(clicks[i], prob[i, 0].numpy() > 0.5, samples[i])

    map_samples(correct, range(len(samples)), threads)


def add_corrective_clicks_batched(prob: torch.Tensor, samples: list[Sample], clicks: list[list],
                                  target: torch.Tensor, valid: torch.Tensor) -> None:
    """:func:`add_corrective_clicks` in one batched pass on ``prob``'s device (``batched_clicks.next_clicks``:
    the same clicks). ``prob`` (B, 1, H, W); ``target``, ``valid`` (B, H, W) bool on the same device."""
    for i, click in enumerate(next_clicks(prob[:, 0] > 0.5, target, ~valid)):
        if click is not None and samples[i].mode not in FIXED_PROMPT_MODES:
            clicks[i].append(click)


def append_next_click(clicks: list, pred: np.ndarray, sample: Sample) -> bool:
    """Append to ``clicks`` the RITM next click for ``pred`` ((H, W) bool); False if ``pred`` has no error."""
    click = geometry.next_click(pred, sample.target, ignore=~sample.valid)
    if click is None:
        return False
    clicks.append((float(click[0]), float(click[1]), bool(click[2])))
    return True


def damaged_mask(mask: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``mask`` ((H, W) bool) with one large error of the kind a corrective click must fix at once.

    One of: eroded or dilated by 3-15 px (a boundary off everywhere), or a disk of 15-40 % of the
    object's size flipped around a random object or background pixel near the object (a missing
    part or a spill into clutter).
    """
    kind = rng.integers(3)
    if kind < 2:
        k = int(rng.integers(3, 16)) * 2 + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        op = cv2.erode if kind == 0 else cv2.dilate
        return op(mask.astype(np.uint8), kernel).astype(bool)
    x0, y0, x1, y1 = geometry.mask_box(target)
    radius = max(4.0, rng.uniform(0.15, 0.4) * max(x1 - x0, y1 - y0))
    near = cv2.dilate(target.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    ys, xs = np.nonzero(near)
    pick = rng.integers(len(xs))
    yy, xx = np.ogrid[: mask.shape[0], : mask.shape[1]]
    disk = (xx - xs[pick]) ** 2 + (yy - ys[pick]) ** 2 <= radius**2
    inside_object = bool(target[ys[pick], xs[pick]])
    return np.where(disk, not inside_object, mask)  # drop a part of the object, or spill past it


def spilled_mask(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``target`` ((H, W) bool) plus a spill far larger than the object: the first-click failure on
    a small object, whose mask takes in a large part of the scene around it.

    The spill is an ellipse with semi-axes of U(0.2, 0.6) x the window's side about a pixel
    within 15 px of the object, so it covers most or all of the object and a large region beside it.
    """
    height, width = target.shape
    near = cv2.dilate(target.astype(np.uint8), np.ones((31, 31), np.uint8)).astype(bool)
    ys, xs = np.nonzero(near)
    pick = rng.integers(len(xs))
    ry, rx = rng.uniform(0.2, 0.6, size=2) * max(height, width)
    yy, xx = np.ogrid[:height, :width]
    return target | (((xx - xs[pick]) / rx) ** 2 + ((yy - ys[pick]) / ry) ** 2 <= 1.0)


def damage_previous_masks(prev: torch.Tensor, samples: list[Sample], clicks: list[list], share: float,
                          rng: np.random.Generator, spill_share: float = 0.0) -> None:
    """Replace ``share`` of the previous masks ((B, 1, H, W) probabilities, in place) by a damaged
    copy (:func:`damaged_mask`; ``spill_share`` of them :func:`spilled_mask` instead) and add the
    corrective click that damage calls for, so the network learns that a click overrules a wrong
    previous mask over the whole erroneous region."""
    if share <= 0:  # draws nothing, so runs without damage keep their random stream
        return
    for i, s in enumerate(samples):
        if s.mode in FIXED_PROMPT_MODES or rng.random() >= share:
            continue
        spill = spill_share > 0 and rng.random() < spill_share  # no draw at 0: v5/v6's stream is kept
        damaged = spilled_mask(s.target, rng) if spill else damaged_mask(prev[i, 0].numpy() > 0.5, s.target, rng)
        damaged &= s.valid
        if append_next_click(clicks[i], damaged, s):
            prev[i, 0] = torch.from_numpy(damaged.astype(np.float32))


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


BOUNDARY_BAND = 3  # px (training-crop pixels) either side of the target boundary
# Sets whose masks are not boundary-accurate: COCO polygons (COCO128, COCO-MVal) and the Human
# set's automatically made masks. ECSSD's are hand-traced to the pixel. With --coarse-band the
# loss ignores a thin band around these targets' boundaries, so edges are learned from ECSSD.
COARSE_MASK_SETS = ("COCO128", "COCO_MVal", "Human")


def boundary_band(target: torch.Tensor, radius: int = BOUNDARY_BAND) -> torch.Tensor:
    """(B,1,H,W) 1.0 on pixels within ``radius`` px (Chebyshev) of a target/background boundary."""
    k = 2 * radius + 1
    dilated = F.max_pool2d(target, k, stride=1, padding=radius)
    eroded = -F.max_pool2d(-target, k, stride=1, padding=radius)
    return dilated - eroded


def loss_valid(samples: list[Sample], valid: torch.Tensor, target: torch.Tensor, coarse_band: int) -> torch.Tensor:
    """(B,1,H,W) pixels the mask loss counts: ``valid``, minus the ``coarse_band``-px boundary band
    of samples from COARSE_MASK_SETS (``coarse_band`` 0: ``valid`` unchanged)."""
    if not coarse_band:
        return valid
    coarse = torch.tensor([set_name(s.source) in COARSE_MASK_SETS for s in samples], dtype=valid.dtype,
                          device=valid.device)
    return valid * (1 - coarse[:, None, None, None] * boundary_band(target, coarse_band))


def mask_losses(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                boundary_weight: float = 0.0) -> torch.Tensor:
    """(B, K) BCE + Dice per hypothesis, over valid pixels. logits (B,K,H,W), target/valid (B,1,H,W).

    ``boundary_weight`` > 0 weights BCE by 1 + boundary_weight on the target's boundary band (a
    weighted mean, so the loss scale stays comparable); 0 is plain BCE.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none")
    weight = valid * (1 + boundary_weight * boundary_band(target)) if boundary_weight else valid
    bce = (bce * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3)).clamp(min=1)
    prob = torch.sigmoid(logits) * valid
    inter = (prob * target).sum(dim=(2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(2, 3)) + (target * valid).sum(dim=(2, 3)) + 1)
    return bce + dice


def true_iou(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K) IoU of each thresholded hypothesis with the target (no gradient)."""
    with torch.no_grad():
        pred = (logits > 0).float() * valid
        t = target * valid
        inter = (pred * t).sum(dim=(2, 3))
        union = (pred + t).clamp(max=1).sum(dim=(2, 3))
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _stack(samples: list[Sample], field: str, device) -> torch.Tensor:
    """(B, 1, H, W) float32 of each sample's ``field`` mask (its target where the field is None)."""
    masks = [getattr(s, field) if getattr(s, field) is not None else s.target for s in samples]
    return torch.from_numpy(np.stack(masks)[:, None].astype(np.float32)).to(device)


def total_loss(logits, iou_pred, samples, clicks, size, boundary_weight: float = 0.0,
               coarse_band: int = 0, part_weight: float = 1.0,
               hypotheses: tuple[str, ...] = HYPOTHESES) -> tuple[torch.Tensor, dict[str, float]]:
    """Mask loss of the hypotheses by their meaning (module docstring) plus the IoU head's MSE;
    ``part_weight`` scales hypothesis 1's loss on a click on a known part. ``hypotheses`` empty:
    best-of-K (:func:`best_of_k_loss`)."""
    if not hypotheses:
        return best_of_k_loss(logits, iou_pred, samples, clicks, size, boundary_weight, coarse_band)
    full = upsample(logits, size)
    target = _stack(samples, "target", logits.device)
    whole = _stack(samples, "whole", logits.device)
    part = _stack(samples, "part", logits.device)
    valid = torch.from_numpy(np.stack([s.valid for s in samples])[:, None].astype(np.float32)).to(logits.device)
    counted = loss_valid(samples, valid, target, coarse_band)
    ambiguous = torch.tensor([is_ambiguous_prompt(len(c), s.box is not None) for c, s in zip(clicks, samples)],
                             device=logits.device)
    on_part = ambiguous & torch.tensor([s.part is not None for s in samples], device=logits.device)
    per_target = mask_losses(full, target, counted, boundary_weight)  # (B, K)
    iou_target = true_iou(full, target, valid)
    other = OTHER_HYPOTHESIS_WEIGHT * per_target[:, 1:].sum(dim=1)
    chosen = torch.where(ambiguous, per_target[:, 0] + other, per_target[:, 0])
    if on_part.any():  # a batch without a click on a known part needs no whole/part terms
        per_whole = mask_losses(full, whole, counted, boundary_weight)
        per_part = mask_losses(full, part, counted, boundary_weight)
        part_and_whole = per_whole[:, 0] + part_weight * per_part[:, 1] + OTHER_HYPOTHESIS_WEIGHT * per_whole[:, 2]
        chosen = torch.where(on_part, part_and_whole, chosen)
        iou_target = torch.where(on_part[:, None], true_iou(full, whole, valid), iou_target)
        iou_target[:, 1] = torch.where(on_part, true_iou(full[:, 1:2], part, valid)[:, 0], iou_target[:, 1])
    iou_loss = F.mse_loss(iou_pred, iou_target)
    loss = chosen.mean() + iou_loss
    metrics = {"loss": loss.item(), "mask_loss": chosen.mean().item(), "iou_loss": iou_loss.item(),
               "iou": iou_target[:, 0].mean().item()}
    if on_part.any():
        metrics["part_iou"] = iou_target[on_part, 1].mean().item()
    return loss, metrics


def best_of_k_loss(logits, iou_pred, samples, clicks, size, boundary_weight: float = 0.0,
                   coarse_band: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of a model without meanings: an ambiguous prompt trains the best of the K hypotheses on
    the target, any other prompt hypothesis 0; plus the IoU head's MSE against every hypothesis's
    true IoU (with which the runtime picks one)."""
    full = upsample(logits, size)
    target = _stack(samples, "target", logits.device)
    valid = torch.from_numpy(np.stack([s.valid for s in samples])[:, None].astype(np.float32)).to(logits.device)
    per_target = mask_losses(full, target, loss_valid(samples, valid, target, coarse_band), boundary_weight)
    ambiguous = torch.tensor([is_ambiguous_prompt(len(c), s.box is not None) for c, s in zip(clicks, samples)],
                             device=logits.device)
    chosen = torch.where(ambiguous, per_target.min(dim=1).values, per_target[:, 0])
    iou_target = true_iou(full, target, valid)
    iou_loss = F.mse_loss(iou_pred, iou_target)
    loss = chosen.mean() + iou_loss
    best_iou = torch.where(ambiguous, iou_target.max(dim=1).values, iou_target[:, 0])
    return loss, {"loss": loss.item(), "mask_loss": chosen.mean().item(), "iou_loss": iou_loss.item(),
                  "iou": best_iou.mean().item()}


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, net, optimizer, step: int, rng: np.random.Generator, args,
                    elapsed: float = 0.0) -> None:
    """Everything an exact resume needs; ``elapsed``: seconds of training so far (the --minutes clock)."""
    state = {
        "net": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "numpy_rng": rng.bit_generator.state,
        "python_rng": random.getstate(),
        "torch_rng": torch.get_rng_state(),
        "elapsed": elapsed,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def restore_checkpoint(state: dict, net, optimizer, rng: np.random.Generator) -> None:
    """Put a :func:`save_checkpoint` state back: weights, optimiser and every RNG (exact resume)."""
    net.load_state_dict(state["net"])
    optimizer.load_state_dict(state["optimizer"])
    rng.bit_generator.state = state["numpy_rng"]
    random.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])


def learning_rate_factor(step: int, total: int, warmup: int, schedule: str = "cosine",
                         progress: float | None = None) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then cosine or constant.
    The cosine's position is ``(step - warmup) / (total - warmup)`` unless ``progress`` (0-1, the
    share of a ``--minutes`` budget spent) is given."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if progress is None:
        progress = (step - warmup) / max(1, total - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(net, args) -> torch.optim.Optimizer:
    backbone = [p for n, p in net.named_parameters() if n.startswith("encoder.blocks")]
    rest = [p for n, p in net.named_parameters() if not n.startswith("encoder.blocks")]
    return torch.optim.AdamW(
        [{"params": backbone, "lr": args.lr * args.backbone_lr_scale, "base_lr": args.lr * args.backbone_lr_scale},
         {"params": rest, "lr": args.lr, "base_lr": args.lr}],
        weight_decay=1e-4,
    )


# --------------------------------------------------------------------------------------------
# Loop
# --------------------------------------------------------------------------------------------


_WORKER_MAKER: SampleMaker | None = None  # a sample worker's own SampleMaker (ParallelSamples)


def _start_sample_worker(cache: Path, maker_options: dict) -> None:
    global _WORKER_MAKER
    # Out of the parent's process group: a signal to the whole group (Ctrl-C, `timeout`) must reach
    # the parent only, which then closes the pool. A worker killed while it holds the pool's task
    # queue lock deadlocks `Pool.terminate`. Orphaned workers still exit: their queue's pipe closes.
    os.setpgrp()
    cv2.setNumThreads(1)
    sets = load_training_data(Path("."), cache=cache)
    _WORKER_MAKER = SampleMaker({k: v[0] for k, v in sets.items()}, **maker_options)


def _sample_with_seed(seed: tuple[int, int, int]) -> Sample:
    return _WORKER_MAKER.sample(np.random.default_rng(seed))


class ParallelSamples:
    """Batches of samples drawn by ``workers`` processes, ``ahead`` batches in flight.

    Each worker is a fresh (spawned) process that loads the data cache ``cache`` and builds its
    own ``SampleMaker(**maker_options)``: a forked one can deadlock on thread pools (OpenMP,
    OpenCV) the parent had running. Sample ``j`` of step ``t`` is drawn with its own generator
    seeded ``(seed, t, j)``, so the stream does not depend on the number of workers and a resumed
    run continues it exactly (it differs from the ``--workers 0`` stream, which draws every sample
    from the one ``rng``).
    """

    def __init__(self, cache: Path, maker_options: dict, workers: int, batch: int, seed: int, first_step: int,
                 ahead: int = 3):
        self.pool = mp.get_context("spawn").Pool(workers, initializer=_start_sample_worker,
                                                  initargs=(cache, maker_options))
        self.batch, self.seed, self.next_step = batch, seed, first_step
        self.pending = [self._submit() for _ in range(ahead)]

    def _submit(self):
        seeds = [(self.seed, self.next_step, j) for j in range(self.batch)]
        self.next_step += 1
        return self.pool.map_async(_sample_with_seed, seeds)

    def next_batch(self) -> list[Sample]:
        ready = self.pending.pop(0).get()
        self.pending.append(self._submit())
        return ready

    def close(self, timeout: float = 120.0) -> None:
        """Let the batches in flight finish, then stop the workers. ``Pool.terminate`` while the
        pool's task handler is still feeding tasks can deadlock on the task queue's lock (its
        thread waits forever to write); with nothing in flight the workers exit cleanly. Workers
        that do not finish within ``timeout`` seconds are terminated."""
        deadline = time.monotonic() + timeout
        for pending in self.pending:
            pending.wait(max(0.0, deadline - time.monotonic()))
        finished = all(pending.ready() for pending in self.pending)
        self.pending = []
        if finished:
            self.pool.close()
            self.pool.join()
        else:
            self.pool.terminate()


def round_probabilities(single_click_share: float | None = None) -> np.ndarray:
    """P(rounds) over ``ROUND_CHOICES``; ``single_click_share`` replaces P(0 rounds), the rest rescaled."""
    probs = np.array(ROUND_PROBS, dtype=np.float64)
    if single_click_share is not None:
        probs[1:] *= (1 - single_click_share) / probs[1:].sum()
        probs[0] = single_click_share
    return probs / probs.sum()


def train_step(net, optimizer, samples: list[Sample], rng, args, device,
               threads: ThreadPoolExecutor | None = None, batched_rule: bool | None = None) -> dict[str, float]:
    """One optimiser step on ``samples``. ``batched_rule`` (default: on CUDA only) runs the
    corrective-click rule batched on the device (``batched_clicks``) instead of per sample on the CPU.
    With ``args.amp`` the network's passes run in bfloat16 autocast; their outputs are cast back to
    float32 before the click rule and the loss. ``args.hypotheses`` (default ``HYPOTHESES``): what
    the model's hypotheses mean; empty for a best-of-K model."""
    hypotheses = tuple(getattr(args, "hypotheses", HYPOTHESES))
    def forward(*inputs):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=args.amp):
            logits, iou = net(*inputs)
        return logits.float(), iou.float()

    clicks = [list(s.clicks) for s in samples]
    size = args.crop
    prev = torch.zeros(len(samples), 1, size, size)
    image = image_tensor(samples, threads).to(device)
    box_maps = torch.from_numpy(np.stack([geometry.box_map(s.box, size) for s in samples])).to(device)
    rounds = int(rng.choice(ROUND_CHOICES, p=round_probabilities(getattr(args, "single_click_share", None))))
    salient = torch.tensor([s.mode in FIXED_PROMPT_MODES for s in samples])
    if batched_rule is None:
        batched_rule = torch.device(device).type == "cuda"
    if rounds:
        if batched_rule:
            target = torch.from_numpy(np.stack([s.target for s in samples])).to(device)
            valid = torch.from_numpy(np.stack([s.valid for s in samples])).to(device)
        net.eval()
        with torch.no_grad():
            for _ in range(rounds):
                click_maps = click_tensor(clicks, size, args.click_radius, device)
                logits, iou = forward(image, click_maps, prev.to(device), box_maps)
                prob = chosen_probability(logits, iou, clicks, samples, size, hypotheses)
                if batched_rule:  # the previous mask stays on the device between rounds
                    prev = prob
                    add_corrective_clicks_batched(prob, samples, clicks, target, valid)
                else:
                    prev = prob.cpu()
                    add_corrective_clicks(prev, samples, clicks, threads)
                prev[salient.to(prev.device)] = 0  # the zero-prompt pass never has a previous mask at inference
        prev = prev.cpu()
        net.train()
        damage_previous_masks(prev, samples, clicks, args.corrupt_share, rng,  # only where a previous mask exists
                              args.spill_share)
    click_maps = click_tensor(clicks, size, args.click_radius, device)
    logits, iou = forward(image, click_maps, prev.to(device), box_maps)
    loss, metrics = total_loss(logits, iou, samples, clicks, size, args.boundary_weight, args.coarse_band,
                               getattr(args, "part_weight", 1.0), hypotheses)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 2.0)
    optimizer.step()
    metrics["rounds"] = rounds
    return metrics


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    cache = args.run_dir / "data-cache.pkl"
    sets = load_training_data(args.data, cache=cache)
    maker_options = dict(crop=args.crop, input_size=args.input_size, salient_share=args.salient_share,
                         occlude_share=args.occlude_share, part_click_share=args.part_click_share,
                         zoom_at_serving_scale=args.zoom_at_serving_scale, set_weights=args.set_weights)
    maker = SampleMaker({k: v[0] for k, v in sets.items()}, **maker_options)
    last = args.run_dir / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False) if last.exists() else None
    step = state["step"] if state else 0
    # None: samples are drawn in this process from ``rng`` (v1-v17).
    sampler = ParallelSamples(cache, maker_options, args.workers, args.batch, args.seed, step) if args.workers else None
    threads = ThreadPoolExecutor(args.workers) if args.workers else None

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    net = build_network(pretrained=None if args.init else "imagenet", refine=args.refine).to(device)
    optimizer = make_optimizer(net, args)
    rng = np.random.default_rng(args.seed)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    elapsed_before = 0.0
    if state:
        restore_checkpoint(state, net, optimizer, rng)
        elapsed_before = state.get("elapsed", 0.0)
        print(f"resumed from {last} at step {step}")
    elif args.init:
        net.load_weights(read_weights(args.init, map_location=device))

    started = time.time()
    last_save = time.time()
    budget = args.minutes * 60 if args.minutes else None
    batched_rule = {"auto": None, "device": True, "cpu": False}[args.click_rule]

    def elapsed_total() -> float:  # seconds of training, earlier invocations of this run included
        return elapsed_before + time.time() - started

    # SIGTERM (a job's deadline, `timeout`, a scheduler) ends the run after the current step,
    # with a checkpoint, instead of losing the work since the last one.
    terminated = threading.Event()
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    log = (args.run_dir / "log.jsonl").open("a")
    bar = tqdm(total=args.steps, initial=step, desc="train", dynamic_ncols=True, mininterval=10)
    running: dict[str, float] = {}
    while step < args.steps:
        elapsed = elapsed_total()
        if budget is not None and elapsed >= budget:
            print(f"the {args.minutes}-minute budget is spent at step {step}")
            break
        factor = learning_rate_factor(step, args.steps, args.warmup, args.schedule,
                                      progress=elapsed / budget if budget else None)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        before_data = time.perf_counter()
        samples = sampler.next_batch() if sampler else [maker.sample(rng) for _ in range(args.batch)]
        before_step = time.perf_counter()
        metrics = train_step(net, optimizer, samples, rng, args, device, threads, batched_rule)
        # where a step's time goes: waiting for (or making) samples vs the step itself
        metrics["data_s"] = before_step - before_data
        metrics["step_s"] = time.perf_counter() - before_step
        step += 1
        elapsed = elapsed_total()
        for k, v in metrics.items():
            running[k] = 0.98 * running.get(k, v) + 0.02 * v
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{running['loss']:.3f}", iou=f"{running['iou']:.3f}")
            log.write(json.dumps({"step": step, "time": time.time(), "lr": args.lr * factor, **running}) + "\n")
            log.flush()
        out_of_time = args.stop_after_minutes is not None and time.time() - started > args.stop_after_minutes * 60
        if time.time() - last_save > args.ckpt_minutes * 60 or step == args.steps or out_of_time:
            save_checkpoint(last, net, optimizer, step, rng, args, elapsed)
            last_save = time.time()
        if step % args.save_every == 0:
            save_checkpoint(args.run_dir / f"step{step:06d}.ckpt", net, optimizer, step, rng, args, elapsed)
        if out_of_time:
            print(f"stopping after {args.stop_after_minutes} minutes at step {step}")
            break
        if terminated.is_set():
            print(f"terminated: stopping at step {step}")
            break
    save_checkpoint(last, net, optimizer, step, rng, args, elapsed_total())
    signal.signal(signal.SIGTERM, previous_handler)
    bar.close()
    if sampler:
        sampler.close()
        threads.shutdown()


if __name__ == "__main__":
    main()
