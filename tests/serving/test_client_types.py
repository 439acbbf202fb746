"""The SDK's types and uploads, without a server: Prediction, the error classes, every input kind, typing."""

from __future__ import annotations

import dataclasses
import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from faulty_server import PREDICTION
from PIL import Image

from clsloc_client import Box, InputError, ModelRef, Prediction, Unavailable
from clsloc_client.errors import BadImage, ClsLocError, TooLarge, Unauthorized, UnsupportedFormat, error_for
from clsloc_client.uploads import check_jpeg_quality, to_upload

REPO = Path(__file__).resolve().parents[2]
SERVICE_JSON = PREDICTION  # the service's JSON for one image, as the fault server gives it


def test_prediction_reads_and_gives_back_the_service_json():
    prediction = Prediction.from_dict({**SERVICE_JSON, "added_by_a_newer_service": [1, 2]})
    assert prediction.box == Box(1.0, 2.0, 30.0, 40.0)
    assert prediction.model == ModelRef("faulty", "1")
    assert prediction.to_dict() == SERVICE_JSON
    assert prediction.box.xyxy() == (1.0, 2.0, 31.0, 42.0)
    assert prediction.box.area == 1200.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        prediction.label = "other"  # type: ignore[misc]
    assert {prediction, Prediction.from_dict(SERVICE_JSON)} == {prediction}  # frozen: equal and hashable


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadImage),
        (401, Unauthorized),
        (413, TooLarge),
        (415, UnsupportedFormat),
        (503, Unavailable),
        (500, ClsLocError),
    ],
)
def test_each_status_has_its_error_class_and_errors_survive_pickling(status, cls):
    error = error_for(status, "kind", "what went wrong")
    assert type(error) is cls and isinstance(error, ClsLocError)
    assert error.to_dict() == {"error": "kind", "detail": "what went wrong", "status": status}
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls and str(copy) == str(error) == f"{status} kind: what went wrong"
    unavailable = pickle.loads(pickle.dumps(Unavailable(503, "overloaded", "busy", attempts=4, retry_after=2.0)))
    assert (unavailable.attempts, unavailable.retry_after) == (4, 2.0)


def decoded(upload) -> Image.Image:
    return Image.open(io.BytesIO(upload.content))


def test_paths_bytes_and_files_are_sent_as_they_are(tmp_path):
    data = b"\xff\xd8\xff some jpeg bytes"
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    for image in (data, bytearray(data), memoryview(data), str(path), path, io.BytesIO(data)):
        assert to_upload(image).content == data, type(image)
    with open(path, "rb") as f:
        assert to_upload(f) == ("photo.jpg", data, "image/jpeg")


@pytest.mark.parametrize(
    ("image", "error", "words"),
    [
        ("/no/such/photo.jpg", "unreadable", "/no/such/photo.jpg: No such file"),
        (Path("/"), "unreadable", "Is a directory"),
        (io.StringIO("text"), "unsupported_input", "binary mode"),
        (42, "unsupported_input", "cannot send int"),
        (np.zeros((4, 4, 3), np.float32), "unsupported_input", "uint8"),
        (np.zeros((4, 4, 2), np.uint8), "unsupported_input", r"shape \(4, 4, 2\)"),
    ],
)
def test_what_cannot_be_sent_is_an_input_error_naming_it(image, error, words):
    with pytest.raises(InputError, match=words) as caught:
        to_upload(image)
    assert caught.value.status is None and caught.value.error == error


def test_pillow_images_go_losslessly_or_as_jpeg_when_asked():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    png = to_upload(image)
    assert png.filename.endswith(".png") and np.array_equal(np.asarray(decoded(png)), rgb)
    jpeg = to_upload(image, jpeg_quality=60)
    assert jpeg.content_type == "image/jpeg" and decoded(jpeg).format == "JPEG"
    assert len(to_upload(image, jpeg_quality=95).content) > len(jpeg.content)  # the quality asked for is used
    cmyk = to_upload(image.convert("CMYK"))  # a mode PNG cannot hold is sent as RGB
    assert decoded(cmyk).mode == "RGB" and decoded(cmyk).size == (40, 30)
    with pytest.raises(ValueError, match="between 1 and 100"):
        check_jpeg_quality(0)


def test_a_pillow_image_is_sent_as_its_pixels_without_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": would turn the image on the server if it were sent along
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), "red").save(buffer, format="JPEG", exif=exif.tobytes())
    opened = Image.open(io.BytesIO(buffer.getvalue()))
    sent = decoded(to_upload(opened))
    assert sent.size == (40, 20) and not sent.getexif()


@pytest.mark.parametrize(
    ("array", "mode"),
    [
        (np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3), "RGB"),
        (np.arange(4 * 5 * 4, dtype=np.uint8).reshape(4, 5, 4), "RGBA"),
        (np.arange(20, dtype=np.uint8).reshape(4, 5), "L"),
        (np.arange(20, dtype=np.uint8).reshape(4, 5, 1), "L"),
        (np.arange(4 * 10 * 3, dtype=np.uint8).reshape(4, 10, 3)[:, ::2], "RGB"),  # not contiguous
    ],
)
def test_numpy_hwc_uint8_arrays_are_sent_losslessly(array, mode):
    image = decoded(to_upload(array))
    assert image.mode == mode and np.array_equal(
        np.asarray(image), array.reshape(image.size[1], image.size[0], -1).squeeze()
    )


def test_the_client_imports_neither_pillow_nor_numpy_unless_given_such_objects():
    code = (
        "import sys, httpx\n"
        "from clsloc_client import Client\n"
        "answer = {'label': 'a', 'score': 1, 'box': {'x': 0, 'y': 0, 'w': 1, 'h': 1}, 'width': 1, 'height': 1,"
        " 'model': {'name': 'm', 'version': '1'}}\n"
        "with Client('http://svc', transport=httpx.MockTransport(lambda r: httpx.Response(200, json=answer))) as c:\n"
        "    c.predict(b'bytes'); c.predict_many([b'a', b'b'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('PIL', 'numpy', 'torch', 'onnxruntime', 'bentoml')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.slow
def test_the_package_passes_mypy_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path), "clients/clsloc_client"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (REPO / "clients" / "clsloc_client" / "py.typed").exists()
