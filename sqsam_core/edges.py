"""Snap a predicted mask's uncertain boundary to the image's edges (guided filter).

The network's masks come out at stride 2 of an ``S x S`` view and are upsampled bilinearly, so
their boundary is smooth and can sit a pixel or two off the object's real edge. A guided filter
(He, Sun and Tang, *Guided Image Filtering*, TPAMI 2013) re-fits the mask probability locally as
a linear function of the image's grey level, which moves the 0.5 crossing onto intensity edges.
Only pixels the network is unsure of (``unsure < p < 1 - unsure``) may change, so confident
parts of the mask, thin ones included, are kept as predicted.

All arrays here are image-space ``(H, W)`` planes, row = y, column = x, in pixels of the image
(or of its zoom-in source copy, see :func:`refine_mask`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np


class EdgeRefiner(Protocol):
    """What the predictor calls to snap a mask to image edges (:class:`EdgeRefine` is the shipped one)."""

    def refine(self, logits: np.ndarray, rgb: np.ndarray, grey: np.ndarray, source_scale: float) -> np.ndarray:
        """``(H, W)`` bool mask from ``(H, W)`` float32 image-space ``logits``; ``rgb`` ``(h, w, 3)`` /
        ``grey`` ``(h, w)`` uint8 are the source pixels they cover, ``source_scale`` source pixels
        per image pixel."""


@dataclass(frozen=True)
class EdgeRefine:
    """Settings of :func:`refine_mask`, chosen on the held-out train split (models/EXPERIMENTS.md, *Edge refinement*).

    ``radius``: the filter's window is ``(2 radius + 1)^2`` source pixels. ``eps``: the
    regulariser on grey levels in [0, 1]; edges weaker than about ``sqrt(eps)`` are smoothed over.
    ``unsure``: pixels whose probability lies in ``(unsure, 1 - unsure)`` may change; no others.
    """

    radius: int = 2
    eps: float = 1e-3
    unsure: float = 0.2

    def refine(self, logits: np.ndarray, rgb: np.ndarray, grey: np.ndarray, source_scale: float) -> np.ndarray:
        """:meth:`EdgeRefiner.refine` by :func:`refine_mask`.

        ``logits``: ``(H, W)`` float32 image-space; ``rgb`` ``(h, w, 3)`` / ``grey`` ``(h, w)``
        uint8: the source pixels they cover, ``source_scale`` source pixels per image pixel.
        """
        return refine_mask(logits, grey, source_scale, self)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s grey-guide filter: ``(h, w)`` float32 ``src`` smoothed except across ``guide``'s edges.

    ``guide``: ``(h, w)`` float32 in [0, 1]. Box means with reflected borders; O(h w) for any radius.
    (OpenCV ships this only in the contrib wheel, which replaces the base one; it is 6 box filters.)
    """
    def box_mean(plane: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(plane, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box_mean(guide), box_mean(src)
    var_i = box_mean(guide * guide) - mean_i * mean_i
    cov_ip = box_mean(guide * src) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box_mean(a) * guide + box_mean(b)


def guided_filter_where(guide: np.ndarray, src: np.ndarray, where: np.ndarray, radius: int, eps: float,
                        tile: int = 64) -> np.ndarray:
    """:func:`guided_filter` of ``src`` at the ``True`` pixels of ``(h, w)`` bool ``where``; ``src`` elsewhere.

    The filter is run only on the ``tile x tile`` blocks that hold a ``where`` pixel, each with a
    ``2 radius`` margin (its reach: two box means), clipped at the array's border, so the values
    at ``where`` are those of the whole-array filter. A mask's uncertain band is a thin curve, so
    this touches a fraction of its bounding box.
    """
    height, width = src.shape
    out = src.copy()
    rows, cols = -(-height // tile), -(-width // tile)
    padded = np.zeros((rows * tile, cols * tile), bool)
    padded[:height, :width] = where
    margin = 2 * radius
    for row, col in zip(*np.nonzero(padded.reshape(rows, tile, cols, tile).any(axis=(1, 3)))):
        top, left = row * tile, col * tile
        bottom, right = min(height, top + tile), min(width, left + tile)
        y0, x0 = max(0, top - margin), max(0, left - margin)
        y1, x1 = min(height, bottom + margin), min(width, right + margin)
        block = guided_filter(guide[y0:y1, x0:x1], src[y0:y1, x0:x1], radius, eps)
        out[top:bottom, left:right] = block[top - y0 : bottom - y0, left - x0 : right - x0]
    return out


def refine_mask(logits: np.ndarray, grey: np.ndarray, source_scale: float,
                settings: EdgeRefine = EdgeRefine()) -> np.ndarray:
    """``(H, W)`` bool mask from ``(H, W)`` float32 image-space logits, boundary snapped to edges.

    ``grey``: the image's ``(h, w)`` uint8 grey levels at ``source_scale`` source pixels per
    image pixel (1.0, or less for the downscaled copy kept of a very large image; made once per
    image, :attr:`PreparedImage.grey`). The filter runs on the unsure pixels' tiles
    (:func:`guided_filter_where`), in ``grey``'s pixels.
    """
    if source_scale != 1.0:
        return _refine_at_guide_scale(logits, grey, settings)
    mask = logits > 0
    unsure = np.abs(logits) < _unsure_logit(settings)
    band = _filter_band(logits, grey, unsure, settings, 2 * settings.radius + 1)
    if band is None:
        return mask
    (top, bottom, left, right), filtered = band
    window = unsure[top:bottom, left:right]
    mask[top:bottom, left:right] = np.where(window, filtered > 0.5, mask[top:bottom, left:right])
    return mask


def _refine_at_guide_scale(logits: np.ndarray, grey: np.ndarray, settings: EdgeRefine) -> np.ndarray:
    """:func:`refine_mask` for a very large image whose guide is a downscaled ``(h, w)`` copy.

    All the work is done at the guide's size: the logits (a smooth bilinear field) are sampled
    there, filtered in the unsure band, and only the band's bounding box is resized back to
    ``(H, W)`` and thresholded; outside it the mask is ``logits > 0``. Full-size work is then
    one threshold and one resize of the box, instead of several passes over ``(H, W)`` floats
    (12 MP: 184 -> 55 ms on a loaded 2-core machine). Confident pixels are kept at the guide's
    resolution, which is the resolution the zoom-in views are cut from (``ZOOM_SOURCE_MAX_SIDE``),
    so no detail the network could have seen is lost.
    """
    small = cv2.resize(logits, (grey.shape[1], grey.shape[0]), interpolation=cv2.INTER_LINEAR)
    unsure = np.abs(small) < _unsure_logit(settings)
    mask = logits > 0
    band = _filter_band(small, grey, unsure, settings, 2 * settings.radius + 2)
    if band is None:
        return mask
    bounds, filtered = band
    paste_box_from_source(mask, filtered, bounds, grey.shape, 0.5)
    return mask


def paste_box_from_source(mask: np.ndarray, values: np.ndarray, bounds: tuple[int, int, int, int],
                           source_shape: tuple[int, ...], threshold: float) -> None:
    """Resize ``values`` (the ``(top, bottom, left, right)`` box of a ``source_shape`` downscaled
    copy) to the ``(H, W)`` image's pixels and write ``values > threshold`` into ``mask`` there."""
    height, width = mask.shape
    top, bottom, left, right = bounds
    ky, kx = height / source_shape[0], width / source_shape[1]  # image pixels per source pixel
    y0, y1 = round(top * ky), min(height, round(bottom * ky))
    x0, x1 = round(left * kx), min(width, round(right * kx))
    big = cv2.resize(values, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)  # pixel-centre aligned
    mask[y0:y1, x0:x1] = big > threshold


def _filter_band(logits: np.ndarray, grey: np.ndarray, unsure: np.ndarray, settings: EdgeRefine,
                 pad: int) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """The guided-filtered probability over the ``unsure`` band's box grown by ``pad``.

    ``logits``, ``grey`` (uint8) and ``unsure`` (bool) are ``(h, w)`` planes of one size.
    Returns ``((top, bottom, left, right), filtered)``, ``filtered`` the box's probability with
    the ``unsure`` pixels re-fitted (:func:`guided_filter_where`), or None when nothing is unsure.
    """
    bounds = band_bounds(unsure, pad)
    if bounds is None:
        return None
    top, bottom, left, right = bounds
    prob = _sigmoid(logits[top:bottom, left:right])
    guide = grey[top:bottom, left:right].astype(np.float32) / 255.0
    return bounds, guided_filter_where(guide, prob, unsure[top:bottom, left:right], settings.radius, settings.eps)


def _unsure_logit(settings: EdgeRefine) -> float:
    """|logit| below which p lies in ``(unsure, 1 - unsure)``."""
    return math.log((1.0 - settings.unsure) / settings.unsure)


def band_bounds(unsure: np.ndarray, pad: int) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` (exclusive) of the ``True`` pixels grown by ``pad``; None if none."""
    rows, cols = np.nonzero(unsure.any(axis=1))[0], np.nonzero(unsure.any(axis=0))[0]
    if rows.size == 0:
        return None
    height, width = unsure.shape
    return (max(0, rows[0] - pad), min(height, rows[-1] + 1 + pad),
            max(0, cols[0] - pad), min(width, cols[-1] + 1 + pad))


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -30.0, 30.0), dtype=np.float32))
