"""Images: bytes, a path or a binary file -> RGB uint8 array, as displayed.

The one decoding function used by training, serving, batch scoring and
evaluation, so a model never sees a different image in production than in
validation. What it does, in order (one open, one decode):

1. Open the header only. Refuse empty input, non-images, formats Pillow
   cannot decode (HEIC / AVIF / JPEG XL recognized by their signature) and
   images whose header size exceeds ``max_pixels`` (decompression bombs) —
   before any pixel is decoded.
2. Decode. A truncated or corrupt file is an error naming the file; Pillow's
   global ``LOAD_TRUNCATED_IMAGES`` is never touched.
3. Convert to RGB uint8:
   - greyscale, bilevel, palette, CMYK, YCbCr, LAB -> RGB (Pillow's conversion);
   - anything with alpha (RGBA, LA, PA, palette with transparency) is
     composited **on white** — transparent regions of logos and cut-outs are
     shown on white by browsers and image viewers, so that is what people
     annotated;
   - 16-bit and 32-bit greyscale ("I;16", "I", "F") are scaled to 8 bits
     (16-bit: value / 257; wider ranges: min-max stretched), then replicated
     to three channels.
4. Apply the EXIF orientation (values 2-8). A value outside 1-8 (e.g. 65537)
   is ignored with a ``warnings.warn`` naming the file.

Errors are :class:`ImageError` with a ``kind`` that callers map to HTTP codes
(serving: ``too_large``/``too_many_pixels`` -> 413, ``unsupported_format`` ->
415, others -> 400) and a message that names the file.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

# 64 megapixels: more than any phone camera (48 MP = 8000 x 6000), well under
# Pillow's own bomb warning (~89 MP), and about 200 MB once decoded to RGB.
DEFAULT_MAX_PIXELS = 64_000_000

ERROR_KINDS = ("missing", "empty", "not_an_image", "truncated", "unsupported_format", "too_large", "too_many_pixels")

ImageSource = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO

_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# ISO-BMFF brands of image formats Pillow (without plugins) cannot decode.
_UNSUPPORTED_BRANDS = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"hevc": "HEIC",
    b"hevx": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}

# Signatures of formats Pillow reads: a file that starts like one but will not open is damaged, not "not an image".
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"RIFF", "WebP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class ImageError(ValueError):
    """An image that cannot be used. ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, file: str | None, detail: str):
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown ImageError kind {kind!r}")
        self.kind = kind
        self.file = file
        self.detail = detail
        super().__init__(f"{file or 'image'}: {detail}")


class ImageWarning(UserWarning):
    """Something odd about an image that was decoded anyway (e.g. a bogus EXIF orientation)."""

    def __init__(self, file: str | None, kind: str, detail: str):
        self.file = file
        self.kind = kind
        self.detail = detail
        super().__init__(f"{file or 'image'}: {detail}")


def _display_name(source, name: str | None) -> str | None:
    if name is not None:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) if isinstance(getattr(source, "name", None), str) else None


def _check_file(path: Path, file: str | None, max_bytes: int | None) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError("missing", file, "file not found") from None
    except OSError as exc:
        raise ImageError("missing", file, f"cannot read file ({exc.strerror or exc})") from None
    if path.is_dir():
        raise ImageError("not_an_image", file, "is a directory, not an image file")
    if size == 0:
        raise ImageError("empty", file, "file is empty (0 bytes)")
    if max_bytes is not None and size > max_bytes:
        raise ImageError("too_large", file, f"file is {size} bytes, more than the limit of {max_bytes}")
    return size


def check_file(path: str | os.PathLike, *, name: str | None = None, max_bytes: int | None = None) -> int:
    """What the file system alone tells about an image file -> its size in bytes.

    The checks :func:`decode_image` makes on a path before it reads a byte:
    missing (or unreadable), a directory, empty, more than ``max_bytes``;
    each an :class:`ImageError` with the same kind and message. Batch scoring
    on Ray runs them where the list of files is made, so a file that could
    only fail is never shipped to a worker.
    """
    file = _display_name(path, name)
    size = _check_file(Path(path), file, max_bytes)
    if not os.access(path, os.R_OK):
        raise ImageError("missing", file, "cannot read file (Permission denied)")
    return size


def _open_stream(source, file: str | None, max_bytes: int | None) -> BinaryIO:
    """Whatever the caller has -> a seekable binary stream, with empty/missing/too-large refused."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = source
    elif isinstance(source, (str, os.PathLike)):
        _check_file(Path(source), file, max_bytes)
        try:
            return open(source, "rb")
        except OSError as exc:  # e.g. no read permission: the stat above cannot tell
            raise ImageError("missing", file, f"cannot read file ({exc.strerror or exc})") from None
    elif hasattr(source, "read"):
        # With a byte limit, read one byte past it and stop: an endless upload never sits in memory whole.
        data = source.read() if max_bytes is None else source.read(max_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"file object must be opened in binary mode, read() returned {type(data).__name__}")
    else:
        raise TypeError(f"cannot decode an image from {type(source).__name__} (bytes, a path or a binary file)")
    if len(data) == 0:
        raise ImageError("empty", file, "no image data (0 bytes)")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError("too_large", file, f"image is {len(data)} bytes, more than the limit of {max_bytes}")
    return io.BytesIO(data)


def _unidentified(stream: BinaryIO, file: str | None) -> ImageError:
    stream.seek(0)
    head = stream.read(32)
    if head[4:8] == b"ftyp" and head[8:12] in _UNSUPPORTED_BRANDS:
        fmt = _UNSUPPORTED_BRANDS[head[8:12]]
        return ImageError("unsupported_format", file, f"{fmt} images are not supported; convert to JPEG or PNG")
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return ImageError("unsupported_format", file, "JPEG XL images are not supported; convert to JPEG or PNG")
    for signature, fmt in _SIGNATURES:
        if head.startswith(signature) and (fmt != "WebP" or head[8:12] == b"WEBP"):
            return ImageError(
                "truncated", file, f"starts like a {fmt} file but its header cannot be read (truncated or corrupt)"
            )
    return ImageError("not_an_image", file, "not a recognizable image file")


def _open_header(stream: BinaryIO, file: str | None, max_pixels: int | None) -> Image.Image:
    try:
        image = Image.open(stream)
    except UnidentifiedImageError:
        raise _unidentified(stream, file) from None
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", file, f"refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error):
        raise _unidentified(stream, file) from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageError(
            "too_many_pixels", file, f"{width}x{height} = {width * height} pixels, more than the limit of {max_pixels}"
        )
    return image


def _orientation(image: Image.Image, file: str | None) -> int:
    """The EXIF orientation (1-8); anything else is warned about and treated as 1."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception as exc:  # a corrupt EXIF block must not cost the pixels
        warnings.warn(ImageWarning(file, "bad_exif", f"unreadable EXIF data ignored ({exc})"), stacklevel=3)
        return 1
    if isinstance(value, int) and 1 <= value <= 8:
        return value
    if value == 0:  # written by many cameras for "unknown"; means the same as 1
        return 1
    warnings.warn(
        ImageWarning(file, "bad_exif", f"EXIF orientation {value!r} is not a valid value (1-8); ignored"), stacklevel=3
    )
    return 1


def _load_pixels(image: Image.Image, file: str | None) -> None:
    """Decode the pixels; truncated / corrupt data becomes an ImageError naming the file."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", file, f"refused as a decompression bomb ({exc})") from None
    except OSError as exc:
        message = str(exc)
        if "decoder" in message and "not available" in message:
            raise ImageError("unsupported_format", file, f"{image.format} variant not supported ({message})") from None
        raise ImageError(
            "truncated", file, f"truncated or corrupt {image.format or 'image'} data ({message})"
        ) from None
    except (SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise ImageError("truncated", file, f"corrupt {image.format or 'image'} data ({exc})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_wide_grey_to_uint8(np.asarray(image), mode), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _wide_grey_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    if mode.startswith("I;16"):
        return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
    values = values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0 and hi <= 255:
        return values.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return np.rint(values / 257).astype(np.uint8)
    span = hi - lo if hi > lo else 1.0
    return np.rint((values - lo) * (255.0 / span)).astype(np.uint8)


def decode_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
) -> np.ndarray:
    """Decode an image to an RGB uint8 array ``(H, W, 3)`` as displayed (EXIF applied).

    ``name`` is used in error messages (e.g. the uploaded file name);
    paths name themselves. Raises :class:`ImageError`.

    The array is read-only. ``np.array(result)`` if you must write.
    """
    return np.asarray(open_image(source, name=name, max_pixels=max_pixels, max_bytes=max_bytes))


def open_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
) -> Image.Image:
    """:func:`decode_image`'s pixels as a decoded RGB Pillow image instead of an array.

    For a caller whose next step is a Pillow resize (serving's hot path, via
    ``Preprocessing``): it skips the two copies between Pillow's buffer and a
    numpy array, a noticeable part of the time a small photo takes to decode and preprocess.
    """
    file = _display_name(source, name)
    stream = _open_stream(source, file, max_bytes)
    try:
        image = _open_header(stream, file, max_pixels)
        try:
            orientation = _orientation(image, file)
            _load_pixels(image, file)
            rgb = _to_rgb(image)
            if orientation != 1:
                rgb = rgb.transpose(_TRANSPOSE[orientation])
        except BaseException:
            image.close()
            raise
        if rgb is not image:
            image.close()
        return rgb  # pixels are in memory: the stream below can close
    finally:
        stream.close()


def image_size(source: ImageSource, *, name: str | None = None) -> tuple[int, int]:
    """``(width, height)`` of the image as displayed (EXIF applied), from the header only."""
    file = _display_name(source, name)
    stream = _open_stream(source, file, None)
    try:
        with _open_header(stream, file, None) as image:
            width, height = image.size
            if _orientation(image, file) in (5, 6, 7, 8):  # rotated by 90 degrees: axes swap
                width, height = height, width
            return width, height
    finally:
        stream.close()


def check_image(
    source: ImageSource, *, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """Make sure the image decodes (cheaply) and return its displayed ``(width, height)``.

    Used by dataset checks: the whole file is decoded, so truncated or
    corrupt data is found, but JPEGs are decoded at 1/8 scale (libjpeg's DCT
    scaling still reads every byte of the entropy-coded data). Raises
    :class:`ImageError` like :func:`decode_image`.
    """
    file = _display_name(source, name)
    stream = _open_stream(source, file, None)
    try:
        with _open_header(stream, file, max_pixels) as image:
            width, height = image.size
            if _orientation(image, file) in (5, 6, 7, 8):
                width, height = height, width
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, image.size[0] // 8), max(1, image.size[1] // 8)))
            _load_pixels(image, file)
            return width, height
    finally:
        stream.close()
