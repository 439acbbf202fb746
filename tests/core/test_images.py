"""Image decoding: every source kind, every mode, EXIF, and every way an image can be bad."""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from clsloc.images import ImageError, ImageWarning, check_image, decode_image, image_size, open_image


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def exif_orientation(value: int) -> bytes:
    """A minimal big-endian EXIF block holding only an Orientation tag stored as LONG (so 65537 fits)."""
    entry = struct.pack(">HHII", 0x0112, 4, 1, value)
    return b"Exif\x00\x00" + b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + struct.pack(">I", 0)


def marked_image(width=40, height=20) -> Image.Image:
    """Left half red, right half blue: orientation changes are visible in the pixels."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(pixels)


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size: refused before any pixel is decoded."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def test_sources_bytes_path_str_and_file_agree(tmp_path):
    data = encode(marked_image(), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    from_bytes = decode_image(data)
    assert from_bytes.shape == (20, 40, 3) and from_bytes.dtype == np.uint8
    for source in (path, str(path), bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(decode_image(source), from_bytes)
    with open(path, "rb") as handle:
        np.testing.assert_array_equal(decode_image(handle), from_bytes)
    assert from_bytes[0, 0].tolist() == [255, 0, 0] and from_bytes[0, -1].tolist() == [0, 0, 255]


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("L", 200, [200, 200, 200]),
        ("1", 1, [255, 255, 255]),
        ("RGBA", (255, 0, 0, 255), [255, 0, 0]),
        ("RGBA", (255, 0, 0, 0), [255, 255, 255]),  # fully transparent: composited on white
        ("LA", (0, 128), [127, 127, 127]),  # half-transparent black on white
    ],
)
def test_modes_become_rgb(mode, value, expected):
    rgb = decode_image(encode(Image.new(mode, (6, 4), value), "PNG"))
    assert rgb.shape == (4, 6, 3)
    np.testing.assert_allclose(rgb[0, 0], expected, atol=1)


def test_palette_with_and_without_transparency():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert decode_image(encode(palette, "PNG"))[0, 0].tolist() == [10, 200, 30]
    transparent = encode(palette, "PNG", transparency=1)
    assert decode_image(transparent)[0, 0].tolist() == [255, 255, 255]


def test_cmyk_and_16_bit():
    red = decode_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95))
    np.testing.assert_allclose(red[4, 4], [255, 0, 0], atol=3)
    wide = Image.new("I;16", (3, 1))
    wide.putdata([0, 32768, 65535])
    grey = decode_image(encode(wide, "PNG"))
    assert grey[0, :, 0].tolist() == [0, 128, 255]
    assert (grey[..., 0] == grey[..., 2]).all()


@pytest.mark.parametrize(
    "orientation, shape, top_left",
    [
        (1, (20, 40, 3), [255, 0, 0]),
        (3, (20, 40, 3), [0, 0, 255]),
        (6, (40, 20, 3), [255, 0, 0]),
        (8, (40, 20, 3), [0, 0, 255]),
    ],
)
def test_exif_orientation_applied(orientation, shape, top_left):
    data = encode(marked_image(), "JPEG", quality=95, exif=exif_orientation(orientation))
    rgb = decode_image(data)
    assert rgb.shape == shape
    np.testing.assert_allclose(rgb[1, 1], top_left, atol=40)
    assert image_size(data) == (shape[1], shape[0])
    assert check_image(data) == (shape[1], shape[0])


@pytest.mark.parametrize(
    "data",
    [
        encode(marked_image(), "JPEG", quality=95, exif=exif_orientation(6)),  # rotated: a new image
        encode(marked_image(), "PNG"),  # RGB already: the opened image itself
        encode(marked_image().convert("RGBA"), "PNG"),  # composited on white
        encode(marked_image().convert("L"), "JPEG"),
    ],
    ids=["jpeg-rotated", "png-rgb", "png-rgba", "jpeg-grey"],
)
def test_open_image_is_decode_image_as_a_pillow_image(data, tmp_path):
    """Serving's hot path (open_image, no array copies) sees exactly the pixels training sees."""
    image = open_image(data)
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), decode_image(data))
    path = tmp_path / "image"
    path.write_bytes(data)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(np.asarray(open_image(f)), np.asarray(open_image(path)))


def test_bogus_orientation_ignored_with_warning_naming_file(tmp_path):
    path = tmp_path / "bogus.jpg"
    path.write_bytes(encode(marked_image(), "JPEG", exif=exif_orientation(65537)))
    with pytest.warns(ImageWarning, match=r"bogus\.jpg.*65537"):
        rgb = decode_image(path)
    assert rgb.shape == (20, 40, 3)  # as stored
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # orientation 0 ("unknown") is common and silent
        decode_image(encode(marked_image(), "JPEG", exif=exif_orientation(0)))


def test_truncated_names_file_and_does_not_touch_global(tmp_path):
    from PIL import ImageFile

    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) * 2 // 3])
    for fn in (decode_image, check_image):
        with pytest.raises(ImageError) as info:
            fn(path)
        assert info.value.kind == "truncated"
        assert "cut.jpg" in str(info.value) and info.value.file == str(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    "data, kind",
    [
        (b"", "empty"),
        (b"just some text, not pixels", "not_an_image"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "unsupported_format"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "unsupported_format"),
        (huge_png_header(100_000, 100_000), "too_many_pixels"),
    ],
)
def test_bad_bytes_kinds(data, kind):
    with pytest.raises(ImageError) as info:
        decode_image(data, name="upload.bin")
    assert info.value.kind == kind
    assert str(info.value).startswith("upload.bin: ")


def test_limits_and_missing(tmp_path):
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageError) as info:
        decode_image(data, max_pixels=5000)
    assert info.value.kind == "too_many_pixels" and "100x100" in str(info.value)
    assert decode_image(data, max_pixels=None).shape == (100, 100, 3)
    with pytest.raises(ImageError) as info:
        decode_image(data, max_bytes=10)
    assert info.value.kind == "too_large"
    with pytest.raises(ImageError) as info:
        decode_image(io.BytesIO(data), max_bytes=10)
    assert info.value.kind == "too_large"
    assert decode_image(io.BytesIO(data), max_bytes=len(data)).shape == (100, 100, 3)
    with pytest.raises(ImageError) as info:
        decode_image(tmp_path / "nope.jpg")
    assert info.value.kind == "missing" and "nope.jpg" in str(info.value)
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(ImageError) as info:
        image_size(tmp_path / "zero.jpg")
    assert info.value.kind == "empty"
    assert isinstance(info.value, ValueError)  # callers may catch ValueError


def test_text_mode_file_is_a_clear_type_error(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello")
    with open(path) as handle, pytest.raises(TypeError, match="binary"):
        decode_image(handle)
