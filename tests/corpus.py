"""A corpus of hostile and odd inputs, generated (nothing stored), for every path that takes images.

``image_cases()`` yields files: each a name, its bytes, and what a caller of
the engine must get back for it — a refusal (HTTP status + ImageError kind +
words the message must contain) or an answer (the image as displayed: size,
and for the red-square images the box the oracle model finds). Tests send
them to POST /predict, inside a batch of good images to POST /predict_batch,
and (as files on disk) to ``clsloc score``, where a refusal is an error row.

``request_cases()`` yields malformed HTTP requests (wrong field, JSON, no
body, a huge header, ...) for the HTTP routes only.

The accepted images draw one red rectangle (``RED_BOX``) on white, so the
oracle model of tests/serving/oracle.py must answer "red" and that box, in
pixels of the image as displayed; other models only owe the size.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIZE = (160, 120)  # width, height as displayed
RED_BOX = (40, 30, 50, 40)  # x, y, w, h
RED = (220, 30, 30)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: int  # what POST /predict answers
    error: str | None = None  # ImageError kind (None: the image is answered)
    detail: str = ""  # words the error message must contain
    size: tuple[int, int] | None = None  # (width, height) as displayed, for answered images
    red_box: bool = False  # the oracle finds RED_BOX (answered images drawn by ``_picture``)
    filename: str = "upload.bin"


def _picture(mode: str = "RGB") -> Image.Image:
    rgb = np.full((SIZE[1], SIZE[0], 3), 255, np.uint8)
    x, y, w, h = RED_BOX
    rgb[y : y + h, x : x + w] = RED
    image = Image.fromarray(rgb)
    return image if mode == "RGB" else image.convert(mode)


def good_image() -> bytes:
    """A PNG of the usual picture: every path must answer it (the oracle: "red", ``RED_BOX``)."""
    return _encode(_picture(), "PNG")


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _with_alpha() -> bytes:
    """Transparent everywhere but the red rectangle: composited on white, it is the usual picture."""
    rgba = np.zeros((SIZE[1], SIZE[0], 4), np.uint8)
    x, y, w, h = RED_BOX
    rgba[y : y + h, x : x + w] = (*RED, 255)
    return _encode(Image.fromarray(rgba, "RGBA"), "PNG")


def _sixteen_bit_grey() -> bytes:
    wide = Image.new("I;16", SIZE)
    wide.putdata([round(65535 * x / (SIZE[0] - 1)) for _ in range(SIZE[1]) for x in range(SIZE[0])])  # a ramp
    return _encode(wide, "PNG")


def _animated_gif() -> bytes:
    first, second = _picture("P"), Image.new("RGB", SIZE, (30, 200, 30)).convert("P")
    return _encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def _exif_rotated() -> bytes:
    """Stored on its side with EXIF orientation 6: displayed, it is the usual picture."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = _picture().transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back (ROTATE_270)
    return _encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def _bogus_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 9  # orientations are 1-8: ignored with a warning
    return _encode(_picture(), "JPEG", quality=95, exif=exif.tobytes())


def _png_claiming(width: int, height: int) -> bytes:
    """A valid little PNG whose header claims width x height: refused before a pixel is decoded."""
    png = bytearray(_encode(Image.new("L", (8, 8)), "PNG"))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    png[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    png[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(png[ihdr - 4 : ihdr + 13])))
    return bytes(png)


def image_cases(max_bytes: int = 20 * 1024 * 1024, max_pixels: int = 64_000_000) -> Iterator[Case]:
    """At least 25 kinds of file; ``max_bytes`` / ``max_pixels``: the limits of the service under test."""
    rng = np.random.default_rng(16)
    jpeg, png = _encode(_picture(), "JPEG", quality=90), _encode(_picture(), "PNG")
    side = int(max_pixels**0.5) + 1
    refused = [
        Case("zero-bytes", b"", 400, "empty", "0 bytes"),
        Case("random-bytes", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), 400, "not_an_image", "not a"),
        Case("text", b"just some text, not a picture\n" * 20, 400, "not_an_image", "not a recognizable image"),
        Case("html", b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", 400, "not_an_image"),
        Case(
            "svg",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="160" height="120"><rect width="50" height="40"/></svg>',
            400,
            "not_an_image",
        ),
        Case(
            "pdf",
            b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
            400,
            "not_an_image",
        ),
        Case("truncated-jpeg", jpeg[: len(jpeg) // 2], 400, "truncated", "JPEG"),
        Case("truncated-png", png[: len(png) // 2], 400, "truncated", "PNG"),
        Case("corrupt-jpeg-header", b"\xff\xd8\xff\xe0" + rng.bytes(600), 400, "truncated", "JPEG"),
        Case(
            "heic",
            b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
            415,
            "unsupported_format",
            "HEIC",
        ),
        Case("jpeg-xl", b"\xff\x0a" + rng.bytes(200), 415, "unsupported_format", "JPEG XL"),
        Case("decompression-bomb", _png_claiming(100_000, 100_000), 413, "too_many_pixels", "decompression bomb"),
        Case("over-pixel-limit", _png_claiming(side, side), 413, "too_many_pixels", "more than the limit"),
        Case("over-byte-limit", b"\xff\xd8\xff\xe0" + bytes(max_bytes), 413, "too_large", "more than the limit"),
    ]
    answered = [
        Case("png-alpha", _with_alpha(), 200, red_box=True),
        Case("png-16-bit-grey", _sixteen_bit_grey(), 200),
        Case("gif-palette", _encode(_picture("P"), "GIF"), 200, red_box=True),
        Case("gif-animated", _animated_gif(), 200, red_box=True),  # the first frame
        Case("jpeg-cmyk", _encode(_picture("CMYK"), "JPEG", quality=95), 200, red_box=True),
        Case("webp", _encode(_picture(), "WEBP", lossless=True), 200, red_box=True),
        Case("tiff", _encode(_picture(), "TIFF"), 200, red_box=True),
        Case("bmp", _encode(_picture(), "BMP"), 200, red_box=True),
        Case("greyscale", _encode(_picture("L"), "PNG"), 200),
        Case("one-pixel", _encode(Image.new("RGB", (1, 1), RED), "PNG"), 200, size=(1, 1)),
        Case("one-by-ten-thousand", _encode(Image.new("RGB", (1, 10_000), RED), "PNG"), 200, size=(1, 10_000)),
        Case("exif-rotated", _exif_rotated(), 200, red_box=True),
        Case("bogus-exif", _bogus_exif(), 200, red_box=True),
    ]
    yield from refused
    for case in answered:
        size = case.size or SIZE
        yield Case(case.name, case.data, 200, size=size, red_box=case.red_box, filename=f"{case.name}.img")


@dataclass(frozen=True)
class RequestCase:
    name: str
    kwargs: dict  # for httpx.Client.post
    status: int
    error: str | None  # None: the HTTP server itself refuses (no JSON body)
    detail: str


def request_cases(field: str) -> Iterator[RequestCase]:
    """Malformed requests to the route whose file field is ``field`` ("image" or "images")."""
    good = good_image()
    yield RequestCase("wrong-field-name", {"files": {"picture": ("a.png", good)}}, 400, "invalid_request", "picture")
    yield RequestCase("json-body", {"json": {field: "aGVsbG8="}}, 400, "invalid_request", "application/json")
    yield RequestCase("no-body", {}, 400, "invalid_request", "Content-Type")
    yield RequestCase("text-not-file", {"data": {field: "hello"}}, 400, "invalid_request", "multipart")
    yield RequestCase(
        "broken-multipart",
        {"content": b"--x\r\ngarbage", "headers": {"content-type": "multipart/form-data; boundary=x"}},
        400,
        "invalid_request",
        "multipart",
    )
    # Past the HTTP server's header limit: it answers before the service sees the request.
    yield RequestCase(
        "huge-header",
        {"files": {field: ("a.png", good)}, "headers": {"x-padding": "a" * 1_000_000}},
        400,
        None,
        "Invalid HTTP request",
    )
