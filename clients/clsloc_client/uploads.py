"""Turning what a caller holds into the bytes of an upload.

Paths, bytes and binary files are sent as they are: the service decodes
them (and applies EXIF orientation). Pillow images and numpy arrays are sent
as their pixels, losslessly as PNG, or as JPEG when a quality is given.
Pillow and numpy are only touched when the caller passes such an object.
"""

from __future__ import annotations

import io
import mimetypes
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Union

from clsloc_client.errors import InputError

if TYPE_CHECKING:
    import numpy
    import PIL.Image

ImageInput = Union[
    str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], "PIL.Image.Image", "numpy.ndarray[Any, Any]"
]
"""What ``predict`` accepts: a path, bytes, a binary file object, a Pillow image, a numpy HWC uint8 array."""

# Pillow modes a PNG keeps as they are; anything else (CMYK, YCbCr, LAB, HSV, float) is sent as RGB.
PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


class Upload(NamedTuple):
    """One multipart file: httpx takes it as ``(filename, content, content_type)``."""

    filename: str
    content: bytes
    content_type: str


def check_jpeg_quality(jpeg_quality: int | None) -> None:
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be between 1 and 100, got {jpeg_quality}")


def to_upload(image: ImageInput, *, jpeg_quality: int | None = None, name: str = "image") -> Upload:
    """The upload for one input; :class:`InputError` for a file that cannot be read or an object that cannot be sent."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return Upload(name, bytes(image), "application/octet-stream")
    if isinstance(image, (str, os.PathLike)):
        return _read_path(Path(image))
    pil = sys.modules.get("PIL.Image")  # a Pillow image exists only if the caller imported Pillow
    if pil is not None and isinstance(image, pil.Image):
        return _encode(image, jpeg_quality, name)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(image, np.ndarray):
        return _encode(_array_to_pillow(image), jpeg_quality, name)
    if callable(getattr(image, "read", None)):
        return _read_file(image)  # type: ignore[arg-type]  # duck-typed: anything with read()
    raise InputError(
        "unsupported_input",
        f"cannot send {type(image).__name__} as an image: "
        "pass a path, bytes, a binary file, a Pillow image or a numpy HWC uint8 array",
    )


def describe(image: object) -> str:
    """A short name for an input in messages: its path or file name, else its type."""
    if isinstance(image, (str, os.PathLike)):
        return str(os.fspath(image))
    name = getattr(image, "name", None)
    return name if isinstance(name, str) else type(image).__name__


def _content_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _read_path(path: Path) -> Upload:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError("unreadable", f"{path}: {exc.strerror or exc}") from exc
    return Upload(path.name, data, _content_type(path.name))


def _read_file(file: IO[bytes]) -> Upload:
    filename = Path(describe(file)).name
    try:
        data = file.read()
    except OSError as exc:
        raise InputError("unreadable", f"{filename}: {exc.strerror or exc}") from exc
    if not isinstance(data, (bytes, bytearray)):
        raise InputError("unsupported_input", f"{filename}: file objects must be opened in binary mode ('rb')")
    return Upload(filename, bytes(data), _content_type(filename))


def _array_to_pillow(array: numpy.ndarray[Any, Any]) -> PIL.Image.Image:
    from PIL import Image

    shape = tuple(array.shape)
    if array.dtype.name != "uint8":
        raise InputError("unsupported_input", f"a numpy image must be uint8 (HWC, 0-255), got dtype {array.dtype}")
    if len(shape) == 3 and shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InputError(
            "unsupported_input", f"a numpy image must be HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA), got shape {shape}"
        )
    return Image.fromarray(array)  # uint8 HxW -> L, HxWx3 -> RGB, HxWx4 -> RGBA


def _encode(image: PIL.Image.Image, jpeg_quality: int | None, name: str) -> Upload:
    """PNG (lossless) by default, JPEG at ``jpeg_quality`` when asked. No EXIF: the pixels are sent as held."""
    buffer = io.BytesIO()
    try:
        if jpeg_quality is None:
            image = image if image.mode in PNG_MODES else image.convert("RGB")
            # compress_level 1: the bytes cross a local network; level 6 costs several times the CPU for little.
            image.save(buffer, format="PNG", compress_level=1)
            return Upload(f"{name}.png", buffer.getvalue(), "image/png")
        image = image if image.mode in ("L", "RGB") else image.convert("RGB")
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    except (OSError, ValueError) as exc:
        raise InputError("unsupported_input", f"cannot encode the {image.mode} image: {exc}") from exc
    return Upload(f"{name}.jpg", buffer.getvalue(), "image/jpeg")
