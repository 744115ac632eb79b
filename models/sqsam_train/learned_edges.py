"""The learned edge refiner: a small full-resolution network that corrects the logits near a mask's boundary.

An opt-in alternative to the guided filter of :mod:`sqsam_core.edges` (same band idea), kept with
the training code because it is not adopted for serving: on the held-out split it improves
ECSSD's NoC@90 but not the whole split's, at ~25 ms more per click (models/EXPERIMENTS.md,
*Learned edge refiner*). :mod:`sqsam_train.edge_net` trains and exports it;
:class:`LearnedEdgeRefine` runs the exported ONNX file and can be passed to
``SqueezeSAM(edge_refine=...)`` (``python -m sqsam_train.validate --edge-net FILE`` does).

Arrays are image-space ``(h, w)`` planes, row = y, column = x.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from sqsam_core.edges import band_bounds, paste_box_from_source

BAND_PX = 3  # pixels within this distance of the mask's boundary may change...
CONFIDENT_LOGIT = 3.0  # ...unless the network is this sure of them (|logit|; p < 0.047 or > 0.953)
EDGE_NET_DILATIONS = (1, 2, 4, 1)  # its 3x3 convolutions
EDGE_NET_REACH = sum(EDGE_NET_DILATIONS)  # pixels of context each side: 8
EDGE_NET_WIDTH = 16  # channels
EDGE_NET_LOGIT_SCALE = 8.0  # its logit input is logit / this


def edge_net_input(rgb: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """The learned refiner's input, the same in training and serving: ``(N, 4, h, w)`` float32
    [RGB scaled to [-1, 1], logit / ``EDGE_NET_LOGIT_SCALE``] from ``(N, h, w, 3)`` uint8 ``rgb``
    and ``(N, h, w)`` ``logits``."""
    colour = rgb.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    return np.concatenate([colour, (logits.astype(np.float32) / EDGE_NET_LOGIT_SCALE)[:, None]], 1)


def boundary_band(logits: np.ndarray, band_px: int = BAND_PX) -> np.ndarray:
    """``(h, w)`` bool: pixels within ``band_px`` (square neighbourhood) of the ``logits > 0`` boundary."""
    mask = (logits > 0).astype(np.uint8)
    kernel = np.ones((2 * band_px + 1, 2 * band_px + 1), np.uint8)
    grown = cv2.dilate(mask, kernel, borderType=cv2.BORDER_REPLICATE)
    shrunk = cv2.erode(mask, kernel, borderType=cv2.BORDER_REPLICATE)
    return grown != shrunk


class LearnedEdgeRefine:
    """The learned edge refiner: a small full-resolution network that corrects the logits near the boundary.

    It sees the image and the upsampled logits (``sqsam_train.edge_net`` trains it on the shipped
    SqueezeSAM's own outputs) and changes only pixels within ``BAND_PX`` of the ``logits > 0``
    boundary. It runs on the ``tile x tile`` blocks that hold such pixels, each with the network's
    reach (``EDGE_NET_REACH``) of real context around it, all blocks in one ONNX Runtime call.
    Pixels the network is already sure of (``|logit| >= confident_logit``) never change.

    Opt-in and not shipped with weights: on the held-out split it improves ECSSD's NoC@90 but
    not the whole split's, at ~25 ms more per click (models/EXPERIMENTS.md, *Learned edge refiner*).
    ``path``: an ONNX file written by ``python -m sqsam_train.edge_net export``.
    """

    def __init__(self, path: str | Path, threads: int | None = None, tile: int = 32,
                 confident_logit: float = CONFIDENT_LOGIT):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.tile = tile
        self.confident_logit = confident_logit

    def __call__(self, logits: np.ndarray, rgb: np.ndarray) -> np.ndarray:
        """``(h, w)`` bool mask from ``(h, w)`` float32 logits and the ``(h, w, 3)`` uint8 RGB they cover."""
        return self.refine_logits(logits, rgb) > 0

    def refine(self, logits: np.ndarray, rgb: np.ndarray, grey: np.ndarray, source_scale: float) -> np.ndarray:
        """The refiners' common call (as :meth:`EdgeRefine.refine`; ``grey`` is not used)."""
        return self(logits, rgb) if source_scale == 1.0 else self.refine_at_source_scale(logits, rgb)

    def refine_logits(self, logits: np.ndarray, rgb: np.ndarray) -> np.ndarray:
        """``(h, w)`` float32 logits with the boundary band's values corrected by the network."""
        out = logits.astype(np.float32, copy=True)
        band = boundary_band(logits) & (np.abs(logits) < self.confident_logit)
        blocks = _band_blocks(band, self.tile)
        if not blocks:
            return out
        reach, tile = EDGE_NET_REACH, self.tile
        height, width = logits.shape

        def pad(plane: np.ndarray) -> np.ndarray:  # context beyond the window's edge: reflected
            return cv2.copyMakeBorder(plane, reach, -height % tile + reach, reach, -width % tile + reach,
                                      cv2.BORDER_REFLECT_101)

        side = tile + 2 * reach
        padded_rgb, padded_logits = pad(rgb), pad(out)
        blocks_rgb = np.stack([padded_rgb[top : top + side, left : left + side] for top, left in blocks])
        blocks_logits = np.stack([padded_logits[top : top + side, left : left + side] for top, left in blocks])
        change = self.session.run(None, {"patches": edge_net_input(blocks_rgb, blocks_logits)})[0]
        for (top, left), block_change in zip(blocks, change[:, 0, reach : reach + tile, reach : reach + tile]):
            bottom, right = min(height, top + tile), min(width, left + tile)
            here = (slice(top, bottom), slice(left, right))
            out[here] += np.where(band[here], block_change[: bottom - top, : right - left], 0.0)
        return out

    def refine_at_source_scale(self, logits: np.ndarray, source: np.ndarray) -> np.ndarray:
        """:meth:`__call__` for a very large image whose ``(h, w, 3)`` ``source`` is a downscaled copy.

        As :func:`sqsam_core.edges.refine_mask` at guide scale: the ``(H, W)`` logits are sampled at the source's size,
        refined there, and only the band's bounding box is resized back and thresholded.
        """
        small = cv2.resize(logits, (source.shape[1], source.shape[0]), interpolation=cv2.INTER_LINEAR)
        mask = logits > 0
        bounds = band_bounds(boundary_band(small), EDGE_NET_REACH)
        if bounds is None:
            return mask
        top, bottom, left, right = bounds
        refined = self.refine_logits(small[top:bottom, left:right], source[top:bottom, left:right])
        paste_box_from_source(mask, refined, bounds, source.shape, 0.0)
        return mask


def _band_blocks(band: np.ndarray, tile: int) -> list[tuple[int, int]]:
    """``(top, left)`` of every ``tile x tile`` block of ``(h, w)`` bool ``band`` holding a True pixel."""
    height, width = band.shape
    rows, cols = -(-height // tile), -(-width // tile)
    padded = np.zeros((rows * tile, cols * tile), bool)
    padded[:height, :width] = band
    hits = padded.reshape(rows, tile, cols, tile).any(axis=(1, 3))
    return [(int(row) * tile, int(col) * tile) for row, col in zip(*np.nonzero(hits))]
