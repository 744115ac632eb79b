"""Decode images safely and turn anything image-like into one ``(H, W, 3)`` uint8 RGB array.

Everything that reaches the model goes through :func:`to_rgb_array`; everything that reaches
sqsam as a file or as bytes (CLI paths, base64 from CVAT, HTTP downloads in Label Studio)
goes through :func:`load_image` / :func:`decode_image_bytes`, which

* refuse images over a pixel limit (default :data:`DEFAULT_MAX_PIXELS`) from the header alone,
  before a single pixel is decoded, so a decompression bomb never allocates;
* apply the EXIF orientation (``ImageOps.exif_transpose``), so pixel coordinates match what a
  browser or image viewer shows (that is where clicks come from);
* turn unreadable, empty, truncated or otherwise undecodable input into
  :class:`~sqsam_core.errors.InvalidImageError` with a one-line message naming the source.

Conversion rules of :func:`to_rgb_array` (arrays and PIL images alike):

* gray (``H x W``, ``H x W x 1``, PIL ``1``/``L``/``I``/``I;16``/``F``) is replicated to 3 channels;
* alpha (``H x W x 2``/``x 4``, PIL ``LA``/``PA``/``RGBA``/``P`` with transparency) is
  composited over white, which is how browsers show transparent images to annotators;
* ``bool`` maps to 0/255; ``uint8`` is kept;
* wider integers (``uint16``, PIL ``I;16``/``I``) are scaled from their effective bit depth,
  the smallest ``b >= 8`` with ``max <= 2**b - 1``: full-range 16-bit data is divided by 257,
  12-bit sensor data by 4095/255, and 8-bit data stored in a wider type is kept as it is;
  data with negative values is stretched from its minimum to its maximum;
* floats in ``[0, 1]`` are multiplied by 255, floats in ``[0, 255]`` are kept, anything else
  is stretched from minimum to maximum; NaN and infinities become 0;
* other PIL modes (``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``, palette) use Pillow's
  conversion to ``RGB``.
"""

from __future__ import annotations

import io
import os
from typing import IO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sqsam_core.errors import ImageTooLargeError, InvalidImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "to_rgb_array",
    "load_image",
    "decode_image_bytes",
]

#: Default limit on ``width * height`` of a decoded image (100 megapixels, ~300 MB as RGB).
DEFAULT_MAX_PIXELS = 100_000_000

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]

# Formats Pillow may open. EPS is left out: Pillow renders it with Ghostscript, an external
# interpreter that must never see untrusted input from an HTTP request.
_EXCLUDED_FORMATS = frozenset({"EPS"})


def _allowed_formats() -> list[str]:
    Image.init()
    return [fmt for fmt in Image.ID if fmt not in _EXCLUDED_FORMATS]


# --------------------------------------------------------------------------------------------
# Arrays and PIL images -> (H, W, 3) uint8 RGB
# --------------------------------------------------------------------------------------------


def to_rgb_array(image, *, exif_transpose: bool = False) -> np.ndarray:
    """Convert ``image`` to a C-contiguous ``(H, W, 3)`` uint8 RGB array.

    ``image``: a numpy array (``H x W``, ``H x W x 1|2|3|4``; bool, any integer type, float)
    or a PIL image of any mode; a path or bytes are decoded with :func:`load_image`. See the
    module docstring for the conversion rules. An ``(H, W, 3)`` uint8 C-contiguous array is
    returned as it is (no copy). ``exif_transpose`` applies a PIL image's EXIF orientation
    (:func:`load_image` always does).

    Raises :class:`InvalidImageError` for empty images, unsupported shapes or types.
    """
    if isinstance(image, Image.Image):
        if exif_transpose:
            image = _exif_transpose(image)
        return _pil_to_rgb(image)
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        return load_image(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise InvalidImageError(
        f"unsupported image type {type(image).__name__}: expected a numpy array, a PIL image, a path or bytes"
    )


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise InvalidImageError(f"unsupported image array dtype {array.dtype}: expected bool, integer or float")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        _check_size(array.shape[0], array.shape[1])
        gray = _scale_to_uint8(array)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if array.ndim != 3 or array.shape[2] not in (2, 3, 4):
        hint = ""
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] > 4:
            hint = " (channels-first? use array.transpose(1, 2, 0))"
        raise InvalidImageError(
            f"unsupported image array shape {tuple(array.shape)}: expected (H, W), (H, W, 3) or (H, W, 4){hint}"
        )
    _check_size(array.shape[0], array.shape[1])
    if array.dtype == np.uint8 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    channels = array.shape[2]
    color = array[:, :, : channels - 1] if channels in (2, 4) else array
    color8 = _scale_to_uint8(color)
    if color8.shape[2] == 1:
        color8 = np.repeat(color8, 3, axis=2)
    if channels in (2, 4):
        alpha8 = _scale_to_uint8(array[:, :, channels - 1])
        return _composite_over_white(color8, alpha8)
    return np.ascontiguousarray(color8)


def _check_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise InvalidImageError(f"empty image ({width}x{height} pixels)")


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map bool / integer / float values to uint8 by the rules in the module docstring."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * np.uint8(255)
    if values.dtype.kind in "iu":
        lo, hi = int(values.min()), int(values.max())
        if lo < 0:
            return _stretch(values.astype(np.float64), lo, hi)
        bits = max(8, hi.bit_length())
        if bits == 8:
            return values.astype(np.uint8)
        scale = 255.0 / float((1 << bits) - 1)
        return np.rint(values.astype(np.float64) * scale).astype(np.uint8)
    # float
    values = np.nan_to_num(values.astype(np.float64, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.rint(values).astype(np.uint8)
    return _stretch(values, lo, hi)


def _stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)


def _composite_over_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 colour with ``(H, W)`` uint8 alpha -> colour composited over white."""
    if alpha.min() == 255:
        return np.ascontiguousarray(color)
    a = alpha.astype(np.uint32)[:, :, None]
    out = (color.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


_GRAY_NUMERIC_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    _check_size(im.height, im.width)
    mode = im.mode
    try:
        if mode == "RGB" and "transparency" not in im.info:
            return np.array(im, dtype=np.uint8)
        if mode in ("1", "L") and "transparency" not in im.info:
            gray = np.array(im.convert("L"), dtype=np.uint8)
            return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
        if mode in _GRAY_NUMERIC_MODES or mode.startswith("I;"):
            values = np.asarray(im)
            if values.dtype.byteorder not in ("=", "|"):
                values = values.astype(values.dtype.newbyteorder("="))
            return _array_to_rgb(values)
        if mode == "La":
            im = im.convert("LA")
        elif mode == "RGBa":
            im = im.convert("RGBA")
        if "transparency" in im.info and mode in ("P", "L", "RGB"):
            im = im.convert("RGBA")
        if im.mode in _ALPHA_MODES:
            rgba = np.array(im.convert("RGBA"), dtype=np.uint8)
            return _composite_over_white(rgba[:, :, :3], rgba[:, :, 3])
        return np.array(im.convert("RGB"), dtype=np.uint8)
    except InvalidImageError:
        raise
    except (ValueError, OSError) as exc:
        raise InvalidImageError(f"cannot convert a PIL image of mode {mode!r} to RGB: {_one_line(exc)}") from exc


def _exif_transpose(im: Image.Image) -> Image.Image:
    """``ImageOps.exif_transpose``; a malformed EXIF block leaves the image as it is."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - bad metadata must not make a good image unreadable
        return im


# --------------------------------------------------------------------------------------------
# Files and bytes
# --------------------------------------------------------------------------------------------


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> np.ndarray:
    """Decode an image file, bytes or binary file object into ``(H, W, 3)`` uint8 RGB.

    ``source``: a path (str or ``os.PathLike``), ``bytes``/``bytearray``/``memoryview``, or an
    open binary file object. The EXIF orientation is applied. ``max_pixels`` limits
    ``width * height`` (None: no limit of sqsam's own; Pillow's ``Image.MAX_IMAGE_PIXELS``
    decompression-bomb guard still applies). ``name`` is how error messages refer to the
    source (default: the path, or ``"image bytes"``).

    Raises :class:`InvalidImageError` (one line, naming the source) when the file is missing,
    unreadable, empty, not an image, truncated or over the pixel limit.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image_bytes(source, max_pixels=max_pixels, name=name)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        label = name or path
        try:
            with open(path, "rb") as fp:
                size = os.fstat(fp.fileno()).st_size
                if size == 0:
                    raise InvalidImageError(f"{label}: empty file (0 bytes)")
                return _decode(fp, label, max_pixels)
        except FileNotFoundError:
            raise InvalidImageError(f"{label}: no such file") from None
        except IsADirectoryError:
            raise InvalidImageError(f"{label}: is a directory, not an image file") from None
        except PermissionError:
            raise InvalidImageError(f"{label}: permission denied") from None
        except OSError as exc:
            raise InvalidImageError(f"{label}: cannot read file: {_one_line(exc)}") from None
    if hasattr(source, "read"):
        return _decode(source, name or getattr(source, "name", None) or "image stream", max_pixels)
    raise InvalidImageError(
        f"unsupported image source {type(source).__name__}: expected a path, bytes or a binary file object"
    )


def decode_image_bytes(
    data: bytes | bytearray | memoryview,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    *,
    name: str | None = None,
) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) into ``(H, W, 3)`` uint8 RGB.

    For adapters: base64-decoded payloads (CVAT), HTTP downloads (Label Studio). ``name``
    (e.g. the URL or task id) is used in error messages. Same checks as :func:`load_image`.
    """
    label = name or "image bytes"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidImageError(f"{label}: expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise InvalidImageError(f"{label}: empty (0 bytes)")
    return _decode(io.BytesIO(data), label, max_pixels)


def _decode(fp: IO[bytes], label: str, max_pixels: int | None) -> np.ndarray:
    # Pillow warns (DecompressionBombWarning) between 1x and 2x Image.MAX_IMAGE_PIXELS and
    # raises over 2x; sqsam's own limit is checked below. The warning is left alone: silencing
    # it with warnings.catch_warnings() is not thread-safe, and servers decode in threads.
    try:
        im = Image.open(fp, formats=_allowed_formats())
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{label}: image too large to decode safely ({_one_line(exc)})") from None
    except UnidentifiedImageError:
        raise InvalidImageError(f"{label}: not an image sqsam can read (unknown or corrupt format)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types on malformed headers
        raise InvalidImageError(f"{label}: corrupt image header: {_one_line(exc)}") from None
    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise InvalidImageError(f"{label}: empty image ({width}x{height} pixels)")
        # Image.open only read the header: refuse oversized images before decoding a pixel.
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLargeError(
                f"{label}: {width}x{height} pixels ({width * height / 1e6:.1f} MP), over the "
                f"{max_pixels / 1e6:g} MP limit"
            )
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"{label}: image too large to decode safely ({_one_line(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - truncated / corrupt data, whatever the plugin raises
            reason = _one_line(exc)
            if "truncated" in reason.lower():
                raise InvalidImageError(f"{label}: truncated image file ({reason})") from None
            raise InvalidImageError(f"{label}: corrupt image data: {reason}") from None
        return to_rgb_array(im, exif_transpose=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
