"""Diagnostic, not a method: how many clicks are spent on pixels near the boundary the network draws.

    python -m sqsam_train.validate models/weights/squeezesam.onnx --per-set 100 --max-clicks 20 --oracle-band 1

After every click the presented mask is replaced by the ground truth within ``radius`` pixels
(city-block distance) of the mask's own boundary; everything else stays as predicted, and the
fed-back previous mask is the network's own, untouched. The NoC@90 this reaches bounds what any
refiner that moves the boundary by at most ``radius`` px could reach. Reads the ground truth: use
it on the held-out train split only, never to pick anything on ``eval/``.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from sqsam_core.evaluation import EvalObject, ObjectResult, evaluate_object

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def band_oracle_mask(mask: np.ndarray, gt: np.ndarray, radius: int) -> np.ndarray:
    """``(H, W)`` bool ``mask`` with the ground truth ``gt`` pasted within ``radius`` px of its boundary.

    The band is the mask dilated minus the mask eroded, ``radius`` times by a 3x3 cross (pixels
    outside the image count as background, so a mask touching the border has a band there too).
    """
    if radius <= 0:
        return mask
    plane = mask.astype(np.uint8)
    grown = cv2.dilate(plane, _CROSS, iterations=radius, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    shrunk = cv2.erode(plane, _CROSS, iterations=radius, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return np.where(grown != shrunk, gt, mask)


class BandOracle:
    """A :class:`~sqsam_core.SqueezeSAM` seen through :func:`band_oracle_mask` (for :func:`evaluate_object`)."""

    def __init__(self, model, radius: int):
        self.model, self.radius = model, radius
        self.gt: np.ndarray | None = None

    def prepare(self, image):
        return self.model.prepare(image)

    def predict(self, prepared, clicks, prev=None):
        pred = self.model.predict(prepared, clicks, prev=prev)
        return dataclasses.replace(pred, mask=band_oracle_mask(pred.mask, self.gt, self.radius))


def evaluate_with_band_oracle(model, objects: list[EvalObject], radius: int, max_clicks: int) -> list[ObjectResult]:
    """The RITM click loop on each object with the oracle's masks (no zero-click pass)."""
    oracle = BandOracle(model, radius)
    results = []
    for obj in objects:
        oracle.gt = obj.gt
        results.append(evaluate_object(oracle, obj, max_clicks, zero_click=False))
    return results
