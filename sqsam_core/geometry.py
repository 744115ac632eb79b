"""Clicks and geometry: the one place that maps between image space and model space.

Serving, evaluation and training all import this module; nothing else re-implements it.

Coordinate conventions (used everywhere in sqsam):

* A **point** is ``(x, y)`` in pixels: ``x`` is the column, ``y`` the row, origin at the
  top-left corner of the top-left pixel's centre (pixel ``(x, y)`` covers ``[x-0.5, x+0.5)``).
* A **click** is ``(x, y, positive)`` with ``positive`` a bool (True = foreground).
* A **box** is ``(x0, y0, x1, y1)`` in pixels, inclusive corners, ``x0 <= x1``, ``y0 <= y1``.
* Arrays are indexed ``[row, col]``: a mask of an ``H x W`` image has shape ``(H, W)``.
* **Image space** is the original image (``H x W``); **model space** is the ``S x S``
  letterboxed square the network sees: the image is resized so that its longer side is ``S``
  (aspect ratio kept), placed at the top-left corner, and the rest is padding.
* A **view** is what one network pass sees: the whole image, or (zoom-in, after the first
  click) a window of it, letterboxed the same way. Window edges are integer image pixels:
  columns ``[left, right)``, rows ``[top, bottom)``.

The model contract (docs/model-contract.md) fixes ``S``, the click radius ``R`` and the output
stride; they are read from the ONNX metadata and passed in here, never hard-coded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np

Click = tuple[float, float, bool]
Box = tuple[float, float, float, float]


# --------------------------------------------------------------------------------------------
# Letterbox: image space <-> model space
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    """How an ``height x width`` image sits inside the ``size x size`` model input.

    ``scale`` multiplies image pixels into model pixels. The resized image covers
    rows ``[0, resized_height)`` and columns ``[0, resized_width)`` of the model input.
    """

    height: int
    width: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / max(self.height, self.width)

    @property
    def resized_height(self) -> int:
        return max(1, min(self.size, int(round(self.height * self.scale))))

    @property
    def resized_width(self) -> int:
        return max(1, min(self.size, int(round(self.width * self.scale))))

    def points_to_model(self, points_xy: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` image-pixel ``(x, y)`` points to model-pixel ``(x, y)`` points."""
        points_xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        # Pixel centres: image pixel x covers [x-0.5, x+0.5) -> model [(x+0.5)*s-0.5, ...).
        return (points_xy + 0.5) * self.scale - 0.5

    def points_to_image(self, points_xy: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`points_to_model`: ``(N, 2)`` model ``(x, y)`` to image ``(x, y)``."""
        points_xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        return (points_xy + 0.5) / self.scale - 0.5

    def box_to_model(self, box: Box) -> Box:
        """Map an image-space box ``(x0, y0, x1, y1)`` to model space."""
        corners = self.points_to_model(np.array([[box[0], box[1]], [box[2], box[3]]]))
        return (corners[0, 0], corners[0, 1], corners[1, 0], corners[1, 1])


def letterbox_image(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize an ``(H, W, 3)`` uint8 RGB image into the top-left of a ``(size, size, 3)`` canvas.

    Returns the canvas (uint8, padding = 0) and the :class:`Letterbox` that describes it.
    Downscaling uses area averaging (no aliasing), upscaling bilinear interpolation.
    """
    height, width = image.shape[:2]
    box = Letterbox(height, width, size)
    return resize_top_left(image, box), box


def resize_top_left(patch: np.ndarray, box: Letterbox) -> np.ndarray:
    """``patch`` (``(h, w)`` or ``(h, w, C)``) resized to the letterbox's resized size and placed
    at the top-left of a zero ``(S, S[, C])`` canvas of its dtype.

    Downscaling uses area averaging (no aliasing), upscaling bilinear interpolation.
    """
    shrink = patch.shape[0] > box.resized_height or patch.shape[1] > box.resized_width
    resized = cv2.resize(patch, (box.resized_width, box.resized_height),
                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    canvas = np.zeros((box.size, box.size, *patch.shape[2:]), dtype=patch.dtype)
    canvas[: box.resized_height, : box.resized_width] = resized.reshape(box.resized_height, box.resized_width,
                                                                        *patch.shape[2:])
    return canvas


def normalize_image(canvas: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(S, S, 3)`` uint8 RGB canvas -> ``(3, S, S)`` float32, ``(v/255 - mean) / std``.

    Padding pixels (outside the letterboxed image) are set to 0 *after* normalisation, so the
    network sees padding as exact zeros, as the contract says. Computed plane by plane in place
    (an order of magnitude faster than a broadcast over the transposed image).
    """
    out = np.empty((3, *canvas.shape[:2]), dtype=np.float32)
    for channel in range(3):
        plane = out[channel]
        plane[...] = canvas[..., channel]
        plane *= np.float32(1.0 / (255.0 * std[channel]))
        plane -= np.float32(mean[channel] / std[channel])
    return out


def zero_padding(chw: np.ndarray, box: Letterbox) -> np.ndarray:
    """Set the padding region (outside the resized image) of a ``(C, S, S)`` array to 0, in place."""
    chw[:, box.resized_height :, :] = 0
    chw[:, :, box.resized_width :] = 0
    return chw


# --------------------------------------------------------------------------------------------
# Views: the whole image or a zoom-in window of it, letterboxed
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """The window ``[left, right) x [top, bottom)`` of an ``image_height x image_width`` image,
    letterboxed into the ``size x size`` model input (see :class:`Letterbox`)."""

    image_height: int
    image_width: int
    size: int
    left: int
    top: int
    right: int
    bottom: int

    def __post_init__(self) -> None:
        if not (0 <= self.left < self.right <= self.image_width and 0 <= self.top < self.bottom <= self.image_height):
            raise ValueError(f"window {self.window} does not fit a {self.image_width}x{self.image_height} image")

    @property
    def window(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` image pixels, right/bottom exclusive."""
        return self.left, self.top, self.right, self.bottom

    @property
    def is_full(self) -> bool:
        return self.window == (0, 0, self.image_width, self.image_height)

    @property
    def letterbox(self) -> Letterbox:
        """How the window (``height x width``) sits in the model input."""
        return Letterbox(self.bottom - self.top, self.right - self.left, self.size)

    def contains(self, x: float, y: float) -> bool:
        """Whether image pixel ``(x, y)`` lies inside the window."""
        return self.left - 0.5 <= x < self.right - 0.5 and self.top - 0.5 <= y < self.bottom - 0.5

    def points_to_model(self, points_xy: np.ndarray) -> np.ndarray:
        """``(N, 2)`` image-pixel ``(x, y)`` -> model-pixel ``(x, y)`` of this view."""
        points_xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        return self.letterbox.points_to_model(points_xy - (self.left, self.top))

    def box_to_model(self, box: Box) -> Box:
        """An image-space box ``(x0, y0, x1, y1)`` in this view's model pixels."""
        return self.letterbox.box_to_model((box[0] - self.left, box[1] - self.top,
                                            box[2] - self.left, box[3] - self.top))

    def crop(self, array: np.ndarray) -> np.ndarray:
        """The window of an image-space ``(H, W, ...)`` array."""
        return array[self.top : self.bottom, self.left : self.right]

    def paste(self, window_mask: np.ndarray) -> np.ndarray:
        """The window's ``(h, w)`` bool mask -> the ``(H, W)`` image mask, False outside the window."""
        if self.is_full:
            return window_mask
        out = np.zeros((self.image_height, self.image_width), dtype=bool)
        out[self.top : self.bottom, self.left : self.right] = window_mask
        return out

    def logits_to_image(self, logits: np.ndarray, stride: int, outside: float = -20.0) -> np.ndarray:
        """``(K, s, s)`` (or ``(s, s)``) view logits -> ``(K, H, W)`` image logits.

        Inside the window: :func:`logits_to_image`; outside it: ``outside`` (background).
        """
        inside = logits_to_image(logits, self.letterbox, stride)
        if self.is_full:
            return inside
        out = np.full((*inside.shape[:-2], self.image_height, self.image_width), outside, dtype=np.float32)
        out[..., self.top : self.bottom, self.left : self.right] = inside
        return out


def logits_to_view(logits: np.ndarray, source: View, target: View, stride: int, outside: float = -20.0) -> np.ndarray:
    """Resample ``(s, s)`` output logits of the ``source`` view onto the ``(S, S)`` model input
    of the ``target`` view (same image), in one bilinear affine warp.

    Target model pixel ``u`` is image pixel ``x = (u + 0.5) / t - 0.5 + left_t``, which is
    source output cell ``((x - left_s + 0.5) * s_scale + 0.5) / stride - 0.5`` (the same per
    axis). Cells outside the source's valid (non-padding) part, and all of the target's padding,
    read as ``outside``.
    """
    src_box, dst_box = source.letterbox, target.letterbox
    plane = np.array(logits, dtype=np.float32)
    plane[math.ceil(src_box.resized_height / stride):, :] = outside
    plane[:, math.ceil(src_box.resized_width / stride):] = outside
    a = src_box.scale / (dst_box.scale * stride)
    shift_x = (0.5 / dst_box.scale + target.left - source.left) * src_box.scale / stride - 0.5
    shift_y = (0.5 / dst_box.scale + target.top - source.top) * src_box.scale / stride - 0.5
    matrix = np.array([[a, 0.0, shift_x], [0.0, a, shift_y]], dtype=np.float64)
    out = cv2.warpAffine(plane, matrix, (target.size, target.size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=outside)
    out[dst_box.resized_height:, :] = outside
    out[:, dst_box.resized_width:] = outside
    return out


def full_view(height: int, width: int, size: int) -> View:
    """The whole ``height x width`` image as one view."""
    return View(height, width, size, 0, 0, width, height)


def zoom_window(mask: np.ndarray, clicks: Sequence[Click], box: Box | None = None, expansion: float = 1.4,
                min_side: float = 200.0) -> tuple[int, int, int, int] | None:
    """RITM's zoom-in window: where the object is, with a margin, in image pixels.

    ``mask``: ``(H, W)`` bool, the current prediction. The tight box of the mask, the positive
    clicks and ``box`` (if any) is grown by ``expansion`` about its centre, each side to at least
    ``min_side`` pixels, and clipped to the image. Returns ``(left, top, right, bottom)`` with
    right/bottom exclusive, or None when there is nothing to zoom on.
    """
    height, width = mask.shape
    xs, ys = [], []
    mask_extent = mask_box(mask)
    if mask_extent is not None:
        xs += [mask_extent[0], mask_extent[2]]
        ys += [mask_extent[1], mask_extent[3]]
    for x, y, positive in clicks:
        if positive:
            xs.append(x)
            ys.append(y)
    if box is not None:
        xs += [box[0], box[2]]
        ys += [box[1], box[3]]
    if not xs:
        return None
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    half_w = max((x1 - x0 + 1) * expansion, min_side) / 2
    half_h = max((y1 - y0 + 1) * expansion, min_side) / 2
    cx, cy = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2  # centre in edge coordinates
    left, right = max(0, int(np.floor(cx - half_w))), min(width, int(np.ceil(cx + half_w)))
    top, bottom = max(0, int(np.floor(cy - half_h))), min(height, int(np.ceil(cy + half_h)))
    return left, top, right, bottom


def letterbox_window(source: np.ndarray, source_scale: float, view: View) -> np.ndarray:
    """The ``(S, S, 3)`` uint8 canvas of a view, cut from ``source``.

    ``source`` is the image, possibly downscaled by ``source_scale`` (source pixels per image
    pixel, <= 1) to bound memory; the window is cut from it and resized to the view's letterbox.
    """
    src_h, src_w = source.shape[:2]
    left = min(src_w - 1, int(np.floor(view.left * source_scale)))
    top = min(src_h - 1, int(np.floor(view.top * source_scale)))
    right = max(left + 1, min(src_w, int(np.ceil(view.right * source_scale))))
    bottom = max(top + 1, min(src_h, int(np.ceil(view.bottom * source_scale))))
    return resize_top_left(source[top:bottom, left:right], view.letterbox)


# --------------------------------------------------------------------------------------------
# Prompt encodings (model space)
# --------------------------------------------------------------------------------------------


def click_maps(clicks_model: Iterable[Click], size: int, radius: float) -> np.ndarray:
    """Rasterise clicks into ``(2, size, size)`` float32 maps: [positive, negative] disks.

    ``clicks_model`` are ``(x, y, positive)`` in **model** pixels. A disk of ``radius`` model
    pixels (1.0 inside, 0.0 outside) is drawn at each click; overlapping disks saturate at 1.
    """
    maps = np.zeros((2, size, size), dtype=np.float32)
    clicks = list(clicks_model)
    if not clicks:
        return maps
    r = float(radius)
    for x, y, positive in clicks:
        channel = 0 if positive else 1
        x0, x1 = max(0, int(np.floor(x - r))), min(size, int(np.ceil(x + r)) + 1)
        y0, y1 = max(0, int(np.floor(y - r))), min(size, int(np.ceil(y + r)) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        disk = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
        maps[channel, y0:y1, x0:x1][disk] = 1.0
    return maps


def box_map(box_model: Box | None, size: int) -> np.ndarray:
    """``(1, size, size)`` float32: 1 inside the model-space box (inclusive corners), else 0.

    ``None`` gives all zeros, which the model reads as "no box".
    """
    out = np.zeros((1, size, size), dtype=np.float32)
    if box_model is None:
        return out
    x0, y0, x1, y1 = box_model
    c0, c1 = max(0, int(round(x0))), min(size, int(round(x1)) + 1)
    r0, r1 = max(0, int(round(y0))), min(size, int(round(y1)) + 1)
    if c0 < c1 and r0 < r1:
        out[0, r0:r1, c0:c1] = 1.0
    return out


# --------------------------------------------------------------------------------------------
# Model output -> image space
# --------------------------------------------------------------------------------------------


def logits_to_image(logits: np.ndarray, box: Letterbox, stride: int) -> np.ndarray:
    """Map ``(K, s, s)`` (or ``(s, s)``) model-output logits back to ``(K, H, W)`` image logits.

    ``s = S / stride``. The valid (non-padding) part of the output is cropped and resized to the
    image's ``H x W`` with bilinear interpolation; threshold at 0 for a mask.
    """
    squeeze = logits.ndim == 2
    stack = logits[None] if squeeze else logits
    valid_h = max(1, int(np.ceil(box.resized_height / stride)))
    valid_w = max(1, int(np.ceil(box.resized_width / stride)))
    # Output cell i covers model pixels [i*stride, (i+1)*stride); crop exactly the image part.
    crop_h, crop_w = box.resized_height / stride, box.resized_width / stride
    out = np.empty((stack.shape[0], box.height, box.width), dtype=np.float32)
    for k, plane in enumerate(stack):
        cropped = np.ascontiguousarray(plane[:valid_h, :valid_w], dtype=np.float32)
        out[k] = _resize_fractional(cropped, crop_w, crop_h, box.width, box.height)
    return out[0] if squeeze else out


def _resize_fractional(plane: np.ndarray, src_w: float, src_h: float, dst_w: int, dst_h: int) -> np.ndarray:
    """Bilinear-resample the region ``[0, src_w) x [0, src_h)`` of ``plane`` to ``(dst_h, dst_w)``.

    Pixel-centre aligned (``align_corners=False``): destination pixel ``j`` samples source
    coordinate ``(j + 0.5) * src_w / dst_w - 0.5``. ``plane`` holds ``ceil(src)`` cells; it is
    resized whole by the factor ``dst / src`` and the result cropped, so one ``cv2.resize`` (fast
    SIMD path) does the work; rounding the enlarged size shifts samples by under a pixel.
    """
    full_w = max(dst_w, round(plane.shape[1] * dst_w / src_w))
    full_h = max(dst_h, round(plane.shape[0] * dst_h / src_h))
    return cv2.resize(plane, (full_w, full_h), interpolation=cv2.INTER_LINEAR)[:dst_h, :dst_w]


def probability_to_model(prob: np.ndarray, box: Letterbox) -> np.ndarray:
    """Image-space ``(H, W)`` probabilities in [0, 1] -> ``(1, S, S)`` float32 previous-mask input."""
    return resize_top_left(prob.astype(np.float32), box)[None]


# --------------------------------------------------------------------------------------------
# Mask measures and the RITM next-click rule
# --------------------------------------------------------------------------------------------


def mask_iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """IoU of two ``(H, W)`` bool masks, leaving out pixels where ``ignore`` is True.

    Two empty masks have IoU 1.0.
    """
    if ignore is not None:
        keep = ~ignore
        pred, gt = pred & keep, gt & keep
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def interior_point(region: np.ndarray) -> tuple[int, int, float] | None:
    """The pixel of an ``(H, W)`` bool region farthest from its boundary.

    Returns ``(x, y, distance)`` in pixels (distance to the nearest pixel outside the region,
    the image border counting as outside), or None for an empty region. Ties go to the first
    pixel in row-major order, so the result is deterministic.
    """
    if not region.any():
        return None
    padded = np.pad(region.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    flat = int(np.argmax(dist))
    y, x = divmod(flat, region.shape[1])
    return x, y, float(dist[y, x])


def next_click(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> Click | None:
    """The RITM evaluation rule for the next corrective click.

    ``pred`` and ``gt`` are ``(H, W)`` bool masks; ``ignore`` (optional, bool) marks pixels that
    count as neither error. False negatives (object missed) and false positives (background
    taken) are the two error regions; the click goes to the interior point (farthest from the
    region's boundary) of the one whose interior is deeper. A false-negative click is positive,
    a false-positive click negative (a tie in depth goes negative). Returns ``(x, y, positive)`` or None when
    there is no error.
    """
    fn = gt & ~pred
    fp = pred & ~gt
    if ignore is not None:
        fn &= ~ignore
        fp &= ~ignore
    fn_point = interior_point(fn)
    fp_point = interior_point(fp)
    if fn_point is None and fp_point is None:
        return None
    fn_depth = fn_point[2] if fn_point else -1.0
    fp_depth = fp_point[2] if fp_point else -1.0
    if fn_depth > fp_depth:  # a tie goes to the negative click, as in RITM's clicker
        return (fn_point[0], fn_point[1], True)
    return (fp_point[0], fp_point[1], False)


def mask_box(mask: np.ndarray) -> Box | None:
    """Tight ``(x0, y0, x1, y1)`` pixel box (inclusive) of an ``(H, W)`` bool mask, or None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1]))
