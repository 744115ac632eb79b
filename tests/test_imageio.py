"""sqsam_core.imageio: every array / PIL mode to (H, W, 3) uint8 RGB, and safe decoding of files and bytes."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from sqsam_core.errors import InvalidImageError, SqsamError
from sqsam_core.imageio import DEFAULT_MAX_PIXELS, decode_image_bytes, load_image, to_rgb_array


def _is_rgb(a: np.ndarray, h: int, w: int) -> bool:
    return a.shape == (h, w, 3) and a.dtype == np.uint8 and a.flags.c_contiguous


def _png_bytes(image: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **save)
    return buf.getvalue()


def _noise(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.strip() == message and message
    return message


# --------------------------------------------------------------------------------------------
# numpy arrays
# --------------------------------------------------------------------------------------------


def test_rgb_uint8_is_returned_without_copy():
    a = _noise()
    assert to_rgb_array(a) is a


def test_non_contiguous_rgb_is_made_contiguous():
    a = _noise()[:, ::2]
    out = to_rgb_array(a)
    assert _is_rgb(out, 48, 32)
    np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1)])
def test_gray_arrays_replicate(shape):
    g = np.arange(35, dtype=np.uint8).reshape(shape)
    out = to_rgb_array(g)
    assert _is_rgb(out, 5, 7)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], g.reshape(5, 7))


def test_bool_array():
    m = np.zeros((4, 6), bool)
    m[1:3, 2:5] = True
    out = to_rgb_array(m)
    assert _is_rgb(out, 4, 6)
    assert set(np.unique(out)) == {0, 255}
    np.testing.assert_array_equal(out[:, :, 0] == 255, m)


def test_uint16_full_range_divides_by_257():
    a = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    out = to_rgb_array(a)
    np.testing.assert_array_equal(out[:, :, 0], np.arange(256, dtype=np.uint8).reshape(16, 16))


def test_uint16_twelve_bit_data_uses_its_bit_depth():
    a = np.array([[0, 4095], [2048, 1024]], dtype=np.uint16)
    out = to_rgb_array(a)[:, :, 0]
    assert out[0, 0] == 0 and out[0, 1] == 255
    assert abs(int(out[1, 0]) - 128) <= 1


def test_wide_integers_holding_8bit_values_are_kept():
    a = np.array([[0, 7], [200, 255]], dtype=np.int32)
    np.testing.assert_array_equal(to_rgb_array(a)[:, :, 1], a.astype(np.uint8))


def test_negative_integers_are_stretched():
    a = np.array([[-1000, 0], [500, 1000]], dtype=np.int16)
    out = to_rgb_array(a)[:, :, 0]
    assert out[0, 0] == 0 and out[1, 1] == 255


def test_float_unit_range():
    a = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    out = to_rgb_array(np.dstack([a, a, a]))
    np.testing.assert_array_equal(out[:, :, 2], [[0, 128], [255, 64]])


def test_float_0_255_range_is_kept():
    a = np.array([[0.0, 10.0], [200.0, 255.0]])
    np.testing.assert_array_equal(to_rgb_array(a)[:, :, 0], [[0, 10], [200, 255]])


def test_float_other_range_is_stretched_and_nan_is_zero():
    a = np.array([[-1.0, np.nan], [1.0, 3.0]])
    out = to_rgb_array(a)[:, :, 0]
    assert out[0, 0] == 0 and out[1, 1] == 255
    assert out[0, 1] == 64  # NaN -> 0.0, stretched from [-1, 3]


def test_rgba_array_composited_over_white():
    a = np.zeros((2, 2, 4), np.uint8)
    a[..., 0] = 200  # red-ish colour
    a[0, 0, 3] = 255  # opaque
    a[0, 1, 3] = 0  # transparent
    a[1, :, 3] = 128
    out = to_rgb_array(a)
    assert _is_rgb(out, 2, 2)
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert abs(int(out[1, 0, 0]) - 228) <= 1 and abs(int(out[1, 0, 1]) - 127) <= 1


def test_opaque_rgba_drops_alpha():
    rgb = _noise(8, 8)
    rgba = np.dstack([rgb, np.full((8, 8), 255, np.uint8)])
    np.testing.assert_array_equal(to_rgb_array(rgba), rgb)


def test_gray_alpha_array():
    a = np.stack([np.full((3, 3), 50, np.uint8), np.zeros((3, 3), np.uint8)], axis=2)
    assert (to_rgb_array(a) == 255).all()


def test_float_rgba_unit_range():
    a = np.zeros((2, 2, 4), np.float32)
    a[..., 2] = 1.0
    a[..., 3] = 1.0
    assert tuple(to_rgb_array(a)[0, 0]) == (0, 0, 255)


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.zeros((3, 40, 50), np.uint8), "channels-first"),
        (np.zeros((2, 3, 4, 5), np.uint8), "shape"),
        (np.zeros((4, 4, 5), np.uint8), "shape"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((5, 0), np.uint8), "empty"),
        (np.zeros((4, 4), dtype=object), "dtype"),
        (np.zeros((4, 4), dtype=np.complex64), "dtype"),
    ],
)
def test_bad_arrays_raise_invalid_image(array, fragment):
    with pytest.raises(InvalidImageError) as exc:
        to_rgb_array(array)
    assert fragment in _one_line(exc)


def test_unsupported_type():
    with pytest.raises(InvalidImageError, match="unsupported image type"):
        to_rgb_array([[1, 2], [3, 4]])


def test_errors_are_value_errors():
    assert issubclass(InvalidImageError, SqsamError) and issubclass(InvalidImageError, ValueError)


# --------------------------------------------------------------------------------------------
# PIL images of every mode
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode",
    ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
     "I", "I;16", "I;16B", "I;16L", "F"],
)
def test_every_pil_mode_gives_rgb(mode):
    im = Image.fromarray(_noise(10, 14)).convert("RGBA" if mode in ("RGBa",) else "RGB")
    try:
        im = im.convert(mode)
    except ValueError:
        im = Image.new(mode, (14, 10))
    out = to_rgb_array(im)
    assert _is_rgb(out, 10, 14)


def test_pil_rgb_matches_array():
    a = _noise()
    np.testing.assert_array_equal(to_rgb_array(Image.fromarray(a)), a)


def test_pil_gray_values():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = to_rgb_array(Image.fromarray(g, mode="L"))
    np.testing.assert_array_equal(out[:, :, 1], g)


def test_pil_mode_1():
    m = np.zeros((4, 5), bool)
    m[0] = True
    out = to_rgb_array(Image.fromarray(m))
    assert (out[0] == 255).all() and (out[1:] == 0).all()


def test_pil_i16_scaled():
    a = np.array([[0, 65535], [257 * 100, 257 * 7]], dtype=np.uint16)
    im = Image.fromarray(a)
    assert im.mode.startswith("I;16")
    np.testing.assert_array_equal(to_rgb_array(im)[:, :, 0], [[0, 255], [100, 7]])


def test_pil_i16_big_endian():
    a = np.array([[0, 65535]], dtype=np.uint16)
    try:
        im = Image.frombytes("I;16B", (2, 1), a.astype(">u2").tobytes())
    except ValueError:
        pytest.skip("Pillow cannot build I;16B images")
    np.testing.assert_array_equal(to_rgb_array(im)[0, :, 0], [0, 255])


def test_pil_float_mode():
    a = np.array([[0.0, 0.5], [1.0, 0.0]], dtype=np.float32)
    im = Image.fromarray(a)
    assert im.mode == "F"
    np.testing.assert_array_equal(to_rgb_array(im)[:, :, 0], [[0, 128], [255, 0]])


def test_pil_palette_with_transparency_goes_white():
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    im.putpixel((0, 0), 0)
    im.info["transparency"] = 0
    out = to_rgb_array(im)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[1, 1]) == (255, 0, 0)


def test_pil_rgba_composite():
    a = np.zeros((2, 2, 4), np.uint8)
    a[..., 1] = 255
    a[0, 0, 3] = 255
    out = to_rgb_array(Image.fromarray(a))
    assert tuple(out[0, 0]) == (0, 255, 0)
    assert tuple(out[1, 1]) == (255, 255, 255)


def test_pil_cmyk_white_and_black():
    im = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    im.putpixel((1, 0), (0, 0, 0, 255))
    out = to_rgb_array(im)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (0, 0, 0)


# --------------------------------------------------------------------------------------------
# Files and bytes: good input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, fmt",
    [("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("I;16", "PNG"), ("1", "PNG"),
     ("CMYK", "JPEG"), ("L", "JPEG"), ("RGB", "BMP"), ("P", "GIF"), ("RGBA", "WEBP"), ("CMYK", "TIFF"),
     ("F", "TIFF")],
)
def test_load_files_of_many_modes(tmp_path, mode, fmt):
    if mode == "I;16":
        im = Image.fromarray((np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100))
    else:
        im = Image.fromarray(_noise(20, 30)).convert(mode)
    path = tmp_path / f"img.{fmt.lower()}"
    try:
        im.save(path, format=fmt)
    except (OSError, KeyError, ValueError):
        pytest.skip(f"this Pillow cannot write {mode} as {fmt}")
    out = load_image(path)
    assert _is_rgb(out, 20, 30)
    np.testing.assert_array_equal(load_image(str(path)), out)
    np.testing.assert_array_equal(load_image(path.read_bytes()), out)
    with open(path, "rb") as fp:
        np.testing.assert_array_equal(load_image(fp), out)


def test_png_with_transparency_roundtrip(tmp_path):
    a = np.zeros((6, 6, 4), np.uint8)
    a[..., 2] = 255
    a[:3, :, 3] = 255
    Image.fromarray(a).save(tmp_path / "t.png")
    out = load_image(tmp_path / "t.png")
    assert tuple(out[0, 0]) == (0, 0, 255) and tuple(out[5, 5]) == (255, 255, 255)


@pytest.mark.parametrize("orientation, expected_hw", [(1, (20, 40)), (3, (20, 40)), (6, (40, 20)), (8, (40, 20))])
def test_exif_orientation_is_applied(tmp_path, orientation, expected_hw):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:10, :20] = 255  # white top-left quadrant marks the orientation
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "exif.jpg"
    im.save(path, exif=exif, quality=95)
    out = load_image(path)
    assert out.shape[:2] == expected_hw
    bright = np.argwhere(out[..., 0] > 128).mean(axis=0)  # (row, col) centre of the white quadrant
    h, w = expected_hw
    corner = (bright[0] < h / 2, bright[1] < w / 2)
    assert corner == {1: (True, True), 3: (False, False), 6: (True, False), 8: (False, True)}[orientation]
    # An in-memory PIL image keeps its pixels unless asked.
    with Image.open(path) as raw:
        assert to_rgb_array(raw).shape[:2] == (20, 40)
        assert to_rgb_array(raw, exif_transpose=True).shape[:2] == expected_hw


def test_to_rgb_array_accepts_paths(tmp_path):
    a = _noise(8, 9)
    Image.fromarray(a).save(tmp_path / "x.png")
    np.testing.assert_array_equal(to_rgb_array(tmp_path / "x.png"), a)
    np.testing.assert_array_equal(to_rgb_array(str(tmp_path / "x.png")), a)


def test_decode_image_bytes_accepts_bytearray_and_memoryview():
    a = _noise(5, 6)
    data = _png_bytes(Image.fromarray(a))
    np.testing.assert_array_equal(decode_image_bytes(bytearray(data)), a)
    np.testing.assert_array_equal(decode_image_bytes(memoryview(data)), a)


# --------------------------------------------------------------------------------------------
# Files and bytes: bad input, each one line naming the source
# --------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(InvalidImageError) as exc:
        load_image(path)
    assert str(path) in _one_line(exc) and "no such file" in str(exc.value)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(InvalidImageError) as exc:
        load_image(tmp_path)
    assert str(tmp_path) in _one_line(exc)


def test_zero_size_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(InvalidImageError) as exc:
        load_image(path)
    assert str(path) in _one_line(exc) and "empty" in str(exc.value)


def test_empty_bytes():
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image_bytes(b"")


def test_decode_rejects_non_bytes():
    with pytest.raises(InvalidImageError, match="expected bytes"):
        decode_image_bytes("not bytes")  # type: ignore[arg-type]


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, I am not a PNG\n" * 10)
    with pytest.raises(InvalidImageError) as exc:
        load_image(path)
    assert str(path) in _one_line(exc)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, fmt, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidImageError) as exc:
        load_image(path)
    message = _one_line(exc)
    assert str(path) in message and "truncated" in message
    with pytest.raises(InvalidImageError, match="truncated"):
        decode_image_bytes(data[: len(data) // 2], name="upload 7")


def test_error_names_the_bytes_source():
    with pytest.raises(InvalidImageError, match="^task 42: "):
        decode_image_bytes(b"\x89PNG garbage", name="task 42")


def _png_claiming(width: int, height: int) -> bytes:
    """A valid tiny PNG whose IHDR is patched to claim ``width x height`` (CRC fixed up)."""
    data = bytearray(_png_bytes(Image.new("L", (2, 2))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_decompression_bomb_header_100000_squared(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(100_000, 100_000))
    with pytest.raises(InvalidImageError) as exc:
        load_image(path)
    assert str(path) in _one_line(exc)
    with pytest.raises(InvalidImageError):
        decode_image_bytes(_png_claiming(100_000, 100_000))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    # 120 MP: over sqsam's 100 MP default, under Pillow's own bomb error (2 x ~89 MP).
    path = tmp_path / "big.png"
    path.write_bytes(_png_claiming(12_000, 10_000))

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InvalidImageError) as exc:
        load_image(path)
    message = _one_line(exc)
    assert str(path) in message and "12000x10000" in message and "limit" in message
    assert 12_000 * 10_000 > DEFAULT_MAX_PIXELS


def test_pixel_limit_is_configurable(tmp_path):
    Image.fromarray(_noise(20, 30)).save(tmp_path / "s.png")
    with pytest.raises(InvalidImageError, match="limit"):
        load_image(tmp_path / "s.png", max_pixels=599)
    assert load_image(tmp_path / "s.png", max_pixels=600).shape == (20, 30, 3)
    assert load_image(tmp_path / "s.png", max_pixels=None).shape == (20, 30, 3)
    with pytest.raises(InvalidImageError, match="limit"):
        decode_image_bytes((tmp_path / "s.png").read_bytes(), max_pixels=100)


def test_unsupported_source_type():
    with pytest.raises(InvalidImageError, match="unsupported image source"):
        load_image(12345)  # type: ignore[arg-type]


def test_eps_is_never_opened():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(InvalidImageError):
        decode_image_bytes(eps)


def test_path_objects_and_strings_give_same_message(tmp_path):
    path = Path(tmp_path) / "missing.jpg"
    with pytest.raises(InvalidImageError) as a:
        load_image(path)
    with pytest.raises(InvalidImageError) as b:
        load_image(str(path))
    assert str(a.value) == str(b.value)
