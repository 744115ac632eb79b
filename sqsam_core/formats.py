"""Mask encodings for the Label Studio and CVAT adapters (and COCO export): the one place for them.

Every function takes or returns an ``(H, W)`` bool mask of the **original image size**, indexed
``[row, col]``. Points are ``(x, y)`` with ``x`` the column and ``y`` the row; "pixels" means
pixel-index coordinates (pixel ``(x, y)`` is the one at ``mask[y, x]``), "percent" means
``100 * x / W`` and ``100 * y / H`` as Label Studio stores them.

Formats:

* **Label Studio brush RLE** (``BrushLabels`` ``value.rle``): the bit-packed run-length format of
  ``@thi.ng/rle-pack`` that Label Studio's frontend decodes into an ``H x W x 4`` RGBA buffer,
  reading the alpha channel. :func:`mask_to_ls_rle` gives byte-for-byte what
  ``label_studio_sdk.converter.brush.mask2rle(mask * 255)`` gives (every channel 255 inside,
  0 outside), but vectorised.
* **Polygons** (Label Studio ``PolygonLabels``, CVAT ``polygon`` shapes): outer contours only.
  Neither format can carry holes, so holes are filled; use a brush / mask shape to keep them.
* **CVAT mask** ``points``: the layout of ``cvat_sdk.masks.encode_mask`` (run lengths of the
  tight-bbox crop, background run first, then inclusive ``x1, y1, x2, y2``), and the
  serverless-function layout (flattened 0/1 crop, then the same box) CVAT's detectors return.
* **COCO RLE**: ``{"size": [H, W], "counts": str}`` via pycocotools (column-major runs).

Errors: a malformed *mask argument* to an encoder raises ``ValueError`` (a bug in the caller);
a malformed *encoded input* to a decoder (it comes from a client) raises
:class:`~sqsam_core.errors.InvalidPromptError`, which adapters map to HTTP 4xx.
"""

from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np

from sqsam_core.errors import InvalidPromptError
from sqsam_core.geometry import mask_box

Polygon = list[tuple[float, float]]

__all__ = [
    "mask_to_ls_rle",
    "decode_ls_rle",
    "ls_rle_to_mask",
    "mask_to_polygons",
    "mask_to_polygons_percent",
    "mask_to_cvat_rle",
    "cvat_rle_to_mask",
    "mask_to_cvat_serverless_mask",
    "mask_to_coco_rle",
    "coco_rle_to_mask",
]


def _check_mask(mask: Any) -> np.ndarray:
    """Validate an ``(H, W)`` mask and return it as a C-contiguous bool array.

    Accepts bool or integer dtypes (nonzero = inside); floats are refused because a
    probability map needs an explicit threshold.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be a 2-D (H, W) array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"mask must not be empty, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.integer):
        return np.ascontiguousarray(arr != 0)
    raise ValueError(f"mask must be bool or integer, got dtype {arr.dtype} (threshold it first)")


def _check_size(height: Any, width: Any) -> tuple[int, int]:
    """Validate an image size given by a client; returns ``(height, width)`` as ints."""
    try:
        h, w = int(height), int(width)
    except (TypeError, ValueError):
        raise InvalidPromptError(f"image size must be integers, got height={height!r}, width={width!r}") from None
    if h <= 0 or w <= 0 or h != height or w != width:
        raise InvalidPromptError(f"image size must be positive integers, got height={height!r}, width={width!r}")
    return h, w


# --------------------------------------------------------------------------------------------
# Label Studio brush RLE
# --------------------------------------------------------------------------------------------

# Header: 32-bit value count, 5-bit (word size - 1), four 4-bit (run-length field size - 1).
_LS_WORD_SIZE = 8
_LS_RLE_SIZES = (3, 4, 8, 16)
_LS_HEADER_TAIL = (
    ((_LS_WORD_SIZE - 1) << 16)
    | ((_LS_RLE_SIZES[0] - 1) << 12)
    | ((_LS_RLE_SIZES[1] - 1) << 8)
    | ((_LS_RLE_SIZES[2] - 1) << 4)
    | (_LS_RLE_SIZES[3] - 1)
)
_LS_MAX_CHUNK = 1 << 16  # longest run one token can carry (16-bit length field)


def _ls_run_tokens(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encode runs (``lengths >= 2`` values, byte ``values``) as repeat tokens, like the SDK.

    A repeat token is ``1 | size index (2 bits) | length - 1 (3/4/8/16 bits) | value (8 bits)``;
    the size index picks the smallest field that holds the length (3 for runs over 256), and
    runs over 65536 are split into 65536-long tokens followed by the remainder. Both inputs are
    int64 arrays, one entry per run; returns ``(codes, nbits)``, int64 arrays in stream order.
    """
    field = np.searchsorted(np.array([8, 16, 256]), lengths)  # <=8: 0, <=16: 1, <=256: 2, else 3
    field_bits = np.array(_LS_RLE_SIZES, dtype=np.int64)[field]
    nbits_run = field_bits + (1 + 2 + _LS_WORD_SIZE)
    full_chunks = np.where(field == 3, (lengths - 1) // _LS_MAX_CHUNK, 0)
    last_len = lengths - full_chunks * _LS_MAX_CHUNK
    last_code = ((((4 | field) << field_bits) | (last_len - 1)) << _LS_WORD_SIZE) | values
    if not full_chunks.any():
        return last_code, nbits_run
    per_run = full_chunks + 1
    token_run = np.repeat(np.arange(lengths.size), per_run)
    full_code = (((4 | 3) << 16 | (_LS_MAX_CHUNK - 1)) << _LS_WORD_SIZE) | values
    codes = full_code[token_run]
    codes[np.cumsum(per_run) - 1] = last_code
    return codes, nbits_run[token_run]


def _pack_bits(codes: np.ndarray, nbits: np.ndarray) -> np.ndarray:
    """Concatenate big-endian bit fields (each ``nbits <= 32``) into a uint8 array, zero-padded.

    The output has ``total_bits // 8 + 1`` bytes: like label-studio-sdk, a stream whose length
    is already a multiple of 8 still gets one zero byte of padding.
    """
    ends = np.cumsum(nbits)
    total = int(ends[-1])
    starts = ends - nbits
    word = starts >> 5
    # Each field lies within the two 32-bit words starting at its first word.
    window = codes.astype(np.uint64) << (64 - (starts & 31) - nbits).astype(np.uint64)
    high = (window >> np.uint64(32)).astype(np.float64)
    low = (window & np.uint64(0xFFFFFFFF)).astype(np.float64)
    nwords = total // 32 + 2
    # Fields never share a bit, so summing their parts is the same as OR-ing them (and
    # float64 holds 32-bit sums exactly).
    words = np.bincount(word, weights=high, minlength=nwords) + np.bincount(word + 1, weights=low, minlength=nwords)
    return words.astype(np.uint32).astype(">u4").view(np.uint8)[: total // 8 + 1]


def mask_to_ls_rle(mask: np.ndarray) -> list[int]:
    """Encode an ``(H, W)`` bool mask as a Label Studio brush RLE (list of byte values 0..255).

    The mask is laid out as the ``H x W x 4`` RGBA uint8 buffer Label Studio decodes (row-major,
    every channel 255 inside the mask, 0 outside) and packed with word size 8 and run-length
    fields of 3, 4, 8 and 16 bits. The output equals label-studio-sdk's
    ``brush.mask2rle(mask.astype(np.uint8) * 255)``. Put it in a result as
    ``{"format": "rle", "rle": ..., "brushlabels": [...]}`` with ``original_width = W`` and
    ``original_height = H``. Fully vectorised (a 12 MP mask encodes in tens of milliseconds).
    """
    m = _check_mask(mask)
    flat = m.ravel()
    num = flat.size * 4
    if num >= 1 << 32:
        raise ValueError(f"mask of shape {m.shape} is too large for Label Studio RLE (H*W*4 must be < 2**32)")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.concatenate((starts, [flat.size]))).astype(np.int64) * 4
    values = flat[starts].astype(np.int64) * 255
    codes, nbits = _ls_run_tokens(lengths, values)
    codes = np.concatenate(([num, _LS_HEADER_TAIL], codes))
    nbits = np.concatenate(([32, 21], nbits))
    return _pack_bits(codes, nbits).tolist()


class _BitReader:
    """Big-endian bit reader over a bytes object (fields of up to 57 bits)."""

    def __init__(self, data: bytes):
        self.data = data + bytes(8)
        self.total = len(data) * 8
        self.pos = 0

    def read(self, n: int) -> int:
        if self.pos + n > self.total:
            raise InvalidPromptError("Label Studio RLE is truncated")
        byte, shift = self.pos >> 3, self.pos & 7
        window = int.from_bytes(self.data[byte : byte + 8], "big")
        self.pos += n
        return (window >> (64 - shift - n)) & ((1 << n) - 1)


def _rle_bytes(rle: Any) -> bytes:
    """A Label Studio RLE (list of ints 0..255, bytes or a uint8 array) as bytes."""
    if isinstance(rle, (bytes, bytearray)):
        return bytes(rle)
    try:
        arr = np.asarray(rle)
    except (TypeError, ValueError):
        raise InvalidPromptError("Label Studio RLE must be a list of integers 0..255") from None
    if arr.ndim != 1 or arr.size < 8 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise InvalidPromptError("Label Studio RLE must be a list of at least 8 integers 0..255")
    if arr.min() < 0 or arr.max() > 255:
        raise InvalidPromptError("Label Studio RLE values must lie in 0..255")
    return arr.astype(np.uint8).tobytes()


def decode_ls_rle(rle: Any, expected_size: int | None = None) -> np.ndarray:
    """Decode a Label Studio brush RLE into its flat value array (as the SDK's ``decode_rle``).

    Accepts any header (word size 1..8, any run-length field sizes) and literal runs, as written
    by Label Studio's frontend, its SDK or :func:`mask_to_ls_rle`. Returns a ``(N,)`` uint8 array;
    for a brush result ``N = H * W * 4`` (RGBA, row-major). Loops over runs, not pixels.
    ``expected_size``: when given, a header declaring another ``N`` is refused before any
    decoding (so a client cannot make us allocate up to 4 GB). Raises
    :class:`InvalidPromptError` on a malformed or truncated stream.
    """
    reader = _BitReader(_rle_bytes(rle))
    num = reader.read(32)
    word_size = reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    if word_size > 8:
        raise InvalidPromptError(f"Label Studio RLE word size {word_size} is not supported (must be <= 8)")
    if expected_size is not None and num != expected_size:
        raise InvalidPromptError(f"Label Studio RLE holds {num} values, expected {expected_size}")
    values: list[int] = []
    counts: list[int] = []
    i = 0
    while i < num:
        repeat = reader.read(1)
        count = min(reader.read(sizes[reader.read(2)]) + 1, num - i)
        if repeat:
            values.append(reader.read(word_size))
            counts.append(count)
        else:
            values.extend(reader.read(word_size) for _ in range(count))
            counts.extend([1] * count)
        i += count
    return np.repeat(np.array(values, dtype=np.uint8), np.array(counts, dtype=np.int64))


def ls_rle_to_mask(rle: Any, height: int, width: int, threshold: int = 128) -> np.ndarray:
    """Decode a Label Studio brush RLE of an ``height x width`` image into an ``(H, W)`` bool mask.

    ``height``/``width`` are the result's ``original_height``/``original_width``. A pixel is in
    the mask when its alpha is ``>= threshold`` (Label Studio brush edges are antialiased;
    128 keeps pixels at least half opaque). Raises :class:`InvalidPromptError` when the RLE is
    malformed or does not hold ``H * W * 4`` values.
    """
    h, w = _check_size(height, width)
    try:
        flat = decode_ls_rle(rle, expected_size=h * w * 4)
    except InvalidPromptError as exc:
        raise InvalidPromptError(f"{exc} (image {w}x{h}, RGBA)") from None
    return flat.reshape(h, w, 4)[:, :, 3] >= threshold


# --------------------------------------------------------------------------------------------
# Polygons (outer contours only, holes filled)
# --------------------------------------------------------------------------------------------


def mask_to_polygons(mask: np.ndarray, min_area: int = 10, simplify_tolerance: float = 1.0) -> list[Polygon]:
    """Outer contours of an ``(H, W)`` bool mask as polygons of ``(x, y)`` pixel points.

    Each polygon lists the centres of boundary pixels (pixel-index coordinates, x = column) of
    one 8-connected part, largest part first. **Holes are filled**: Label Studio
    ``PolygonLabels`` and CVAT polygons cannot carry holes, so only outer contours are returned
    (parts lying inside a hole are dropped with it); brush / mask outputs keep holes.

    ``min_area``: parts with fewer pixels are dropped. ``simplify_tolerance``: Douglas-Peucker
    tolerance in pixels (``cv2.approxPolyDP``); 0 keeps every corner of the contour. Polygons
    with fewer than 3 points (single pixels, 1-pixel-wide lines) are dropped.
    """
    m = _check_mask(mask).astype(np.uint8)
    if simplify_tolerance < 0:
        raise ValueError(f"simplify_tolerance must be >= 0, got {simplify_tolerance}")
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    _, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    polygons: list[tuple[int, Polygon]] = []
    for contour in contours:
        x, y = contour[0, 0]
        area = int(stats[labels[y, x], cv2.CC_STAT_AREA])
        if area < min_area:
            continue
        points = contour
        if simplify_tolerance > 0:
            simplified = cv2.approxPolyDP(contour, simplify_tolerance, closed=True)
            if len(simplified) >= 3:
                points = simplified
        if len(points) < 3:
            continue
        polygons.append((area, [(float(px), float(py)) for px, py in points[:, 0, :]]))
    polygons.sort(key=lambda item: -item[0])
    return [polygon for _, polygon in polygons]


def mask_to_polygons_percent(
    mask: np.ndarray, min_area: int = 10, simplify_tolerance: float = 1.0
) -> list[list[list[float]]]:
    """:func:`mask_to_polygons` in Label Studio percent: ``[[x%, y%], ...]`` per polygon.

    ``x% = 100 * x / W`` and ``y% = 100 * y / H`` with ``(H, W) = mask.shape`` the original image
    size, the inverse of label-studio-sdk's converter (``x / 100 * width``). Ready for a
    ``PolygonLabels`` result's ``value.points``. Holes are filled, as in :func:`mask_to_polygons`.
    """
    m = _check_mask(mask)
    h, w = m.shape
    polygons = mask_to_polygons(m, min_area=min_area, simplify_tolerance=simplify_tolerance)
    return [[[100.0 * x / w, 100.0 * y / h] for x, y in polygon] for polygon in polygons]


# --------------------------------------------------------------------------------------------
# CVAT
# --------------------------------------------------------------------------------------------


def _int_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive tight ``(x1, y1, x2, y2)`` box; an empty mask gets ``(0, 0, 0, 0)`` as cvat_sdk does."""
    box = mask_box(mask)
    if box is None:
        return 0, 0, 0, 0
    x1, y1, x2, y2 = (int(v) for v in box)
    return x1, y1, x2, y2


def mask_to_cvat_rle(mask: np.ndarray) -> list[int]:
    """Encode an ``(H, W)`` bool mask as the ``points`` of a CVAT ``mask`` shape.

    Layout (as ``cvat_sdk.masks.encode_mask(mask)`` with no ``bbox``): run lengths of the
    row-major crop ``mask[y1:y2+1, x1:x2+1]``, alternating background/foreground and starting
    with background (a leading 0 when the crop starts inside the mask), then ``x1, y1, x2, y2``:
    the tight box in pixels, **inclusive**. An empty mask encodes as ``[1, 0, 0, 0, 0]``;
    adapters should rather send no shape.
    """
    m = _check_mask(mask)
    x1, y1, x2, y2 = _int_box(m)
    flat = m[y1 : y2 + 1, x1 : x2 + 1].ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], change, [flat.size])))
    if flat[0]:
        runs = np.concatenate(([0], runs))
    return runs.tolist() + [x1, y1, x2, y2]


def cvat_rle_to_mask(points: Sequence[float], height: int, width: int) -> np.ndarray:
    """Decode CVAT ``mask`` shape ``points`` (see :func:`mask_to_cvat_rle`) into an ``(H, W)`` bool mask.

    Raises :class:`InvalidPromptError` when the values are not integers, the inclusive box does
    not fit the image, or the runs do not cover the box exactly.
    """
    h, w = _check_size(height, width)
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidPromptError("CVAT mask points must be a list of numbers") from None
    if arr.ndim != 1 or arr.size < 5:
        raise InvalidPromptError("CVAT mask points must hold run lengths followed by x1, y1, x2, y2")
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or np.any(arr < 0):
        raise InvalidPromptError("CVAT mask points must be non-negative integers")
    values = arr.astype(np.int64)
    runs, (x1, y1, x2, y2) = values[:-4], values[-4:]
    if not (x1 <= x2 < w and y1 <= y2 < h):
        raise InvalidPromptError(f"CVAT mask box ({x1}, {y1}, {x2}, {y2}) does not fit a {w}x{h} image")
    crop_h, crop_w = int(y2 - y1 + 1), int(x2 - x1 + 1)
    if int(runs.sum()) != crop_h * crop_w:
        raise InvalidPromptError(f"CVAT mask runs cover {int(runs.sum())} pixels, the box has {crop_h * crop_w}")
    crop = np.repeat(np.arange(runs.size) % 2 == 1, runs).reshape(crop_h, crop_w)
    out = np.zeros((h, w), dtype=bool)
    out[y1 : y2 + 1, x1 : x2 + 1] = crop
    return out


def mask_to_cvat_serverless_mask(mask: np.ndarray) -> list[int]:
    """The ``mask`` field a CVAT serverless (nuclio) detector returns for a ``"mask"`` shape.

    Layout (CVAT's ``to_cvat_mask``): the row-major crop ``mask[y1:y2+1, x1:x2+1]`` as 0/1 ints,
    then the inclusive tight box ``x1, y1, x2, y2`` in pixels; CVAT's server turns it into
    :func:`mask_to_cvat_rle`'s layout. The result's ``points`` field is usually the same box.
    """
    m = _check_mask(mask)
    x1, y1, x2, y2 = _int_box(m)
    return m[y1 : y2 + 1, x1 : x2 + 1].astype(np.uint8).ravel().tolist() + [x1, y1, x2, y2]


# --------------------------------------------------------------------------------------------
# COCO RLE
# --------------------------------------------------------------------------------------------


def mask_to_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode an ``(H, W)`` bool mask as compressed COCO RLE ``{"size": [H, W], "counts": str}``.

    Runs are column-major, as COCO specifies (``pycocotools.mask.encode`` of the Fortran-ordered
    uint8 mask); ``counts`` is decoded to an ASCII ``str`` so the dict is JSON-ready.
    """
    from pycocotools import mask as mask_utils

    m = _check_mask(mask)
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def coco_rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE dict into an ``(H, W)`` bool mask.

    ``counts`` may be compressed (``str`` or ``bytes``) or uncompressed (a list of
    column-major run lengths, background first). Raises :class:`InvalidPromptError` when
    the dict is malformed or the runs do not cover ``H * W`` pixels.
    """
    from pycocotools import mask as mask_utils

    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise InvalidPromptError('COCO RLE must be a dict with "size" and "counts"')
    try:
        h, w = rle["size"]
    except (TypeError, ValueError):
        raise InvalidPromptError(f'COCO RLE "size" must be [height, width], got {rle["size"]!r}') from None
    h, w = _check_size(h, w)
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if isinstance(counts, (list, tuple, np.ndarray)):
        runs = np.asarray(counts)
        if runs.ndim != 1 or not np.issubdtype(runs.dtype, np.integer) or np.any(runs < 0):
            raise InvalidPromptError("COCO RLE uncompressed counts must be non-negative integers")
        if int(runs.sum()) != h * w:
            raise InvalidPromptError(f"COCO RLE counts cover {int(runs.sum())} pixels, expected {h}*{w}")
        compressed = mask_utils.frPyObjects({"size": [h, w], "counts": runs.tolist()}, h, w)
    elif isinstance(counts, bytes):
        compressed = {"size": [h, w], "counts": counts}
    else:
        raise InvalidPromptError('COCO RLE "counts" must be a string or a list of integers')
    try:
        decoded = mask_utils.decode(compressed)
    except (TypeError, ValueError, UnicodeError) as exc:
        raise InvalidPromptError(f"COCO RLE cannot be decoded: {exc}") from None
    if decoded.shape != (h, w):
        raise InvalidPromptError(f"COCO RLE decodes to shape {decoded.shape}, expected ({h}, {w})")
    return decoded.astype(bool)
