"""The HTTP contract through TestClient(Clsloc.to_asgi()): answers, every error case, auth, metrics."""

from __future__ import annotations

import io
import re

import numpy as np
import oracle
import pytest
from PIL import Image

RED = oracle.object_image("red", (40, 30, 50, 40))


def upload(data: bytes, name: str = "photo.png"):
    return {"image": (name, data, "application/octet-stream")}


def assert_error(response, status: int, error: str, detail_has: str = ""):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == error
    assert detail_has in body["detail"]


def counter(metrics_text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}\{{{re.escape(want)}\}} ([0-9.e+]+)$", metrics_text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_predict_returns_label_score_box_size_and_model(make_client):
    client = make_client()
    response = client.post("/predict", files=upload(RED))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"label", "score", "box", "width", "height", "model"}
    assert body["label"] == "red" and 0.5 < body["score"] <= 1
    assert (body["width"], body["height"]) == (160, 120)
    assert set(body["box"]) == {"x", "y", "w", "h"}
    assert abs(body["box"]["x"] - 40) < 3 and abs(body["box"]["w"] - 50) < 3
    assert body["model"] == {"name": "oracle", "version": "1"}


def test_predict_batch_keeps_request_order_and_survives_a_bad_image(make_client):
    client = make_client()
    images = [
        oracle.object_image("green", (5, 5, 30, 30)),
        b"garbage",
        RED,
        oracle.object_image("blue", (90, 60, 40, 40)),
    ]
    response = client.post(
        "/predict_batch", files=[("images", (f"{i}.png", d, "image/png")) for i, d in enumerate(images)]
    )
    assert response.status_code == 200
    results = response.json()
    assert [r.get("label") for r in results] == ["green", None, "red", "blue"]
    assert results[1]["error"] == "not_an_image" and results[1]["status"] == 400 and results[1]["detail"]


@pytest.mark.parametrize(
    "data,status,error",
    [
        (b"just some text, not a picture", 400, "not_an_image"),
        (RED[: len(RED) // 2], 400, "truncated"),
        (b"", 400, "empty"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, 415, "unsupported_format"),
    ],
    ids=["not-an-image", "truncated", "empty", "heic"],
)
def test_bad_images_are_4xx_json(make_client, data, status, error):
    client = make_client()
    assert_error(client.post("/predict", files=upload(data)), status, error)
    # and the worker is still fine afterwards
    assert client.post("/predict", files=upload(RED)).status_code == 200


def test_too_large_body_is_413_before_reading_it(make_client):
    client = make_client(max_bytes=2000)
    noisy = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="PNG")
    big = buffer.getvalue() * 3 + b"\x00" * (70 * 1024)  # past the image limit plus the multipart allowance
    assert_error(client.post("/predict", files=upload(big)), 413, "too_large", "limit")


def test_too_large_batch_body_is_413(make_client):
    client = make_client(max_bytes=1000)
    files = [("images", (f"{i}.png", b"\x00" * 9000)) for i in range(10)]  # 90 kB > 8 x 1000 + 64 kB envelope
    assert_error(client.post("/predict_batch", files=files), 413, "too_large")
    # within the body limit, an image over the per-image limit is one 413 item; the others are scored
    small = oracle.object_image("red", (2, 2, 10, 10), size=(20, 20))
    assert len(small) < 1000
    results = client.post(
        "/predict_batch", files=[("images", ("a.png", small)), ("images", ("b.png", b"\x00" * 5000))]
    ).json()
    assert results[0]["label"] == "red" and (results[1]["error"], results[1]["status"]) == ("too_large", 413)


def test_image_over_the_byte_limit_is_413_even_within_the_envelope(make_client):
    client = make_client(max_bytes=2000)
    noisy = np.random.default_rng(1).integers(0, 255, (60, 60, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="PNG")
    assert 2000 < len(buffer.getvalue()) < 2000 + 64 * 1024
    assert_error(client.post("/predict", files=upload(buffer.getvalue())), 413, "too_large", "2000")


def test_too_many_pixels_is_413(make_client):
    client = make_client(max_pixels=100 * 100)
    assert_error(client.post("/predict", files=upload(RED)), 413, "too_many_pixels", "160x120")


@pytest.mark.parametrize(
    "kwargs,detail",
    [
        ({"files": {"picture": ("a.png", RED, "image/png")}}, "fields sent: ['picture']"),
        (
            {"files": {"image": ("a.png", RED, "image/png"), "extra": ("b.png", RED, "image/png")}},
            "unexpected field(s): extra",
        ),
        ({"data": {"image": "not a file"}, "files": {"image": ("a.png", RED)}}, "was sent as text"),
        ({"json": {"image": "aGVsbG8="}}, "got Content-Type 'application/json'"),
        ({"content": b"\x89PNG raw bytes", "headers": {"content-type": "image/png"}}, "got Content-Type 'image/png'"),
        (
            {"content": b"--x\r\ngarbage", "headers": {"content-type": "multipart/form-data; boundary=x"}},
            "expected multipart",
        ),
    ],
    ids=["wrong-field", "extra-field", "text-field", "json-body", "raw-body", "broken-multipart"],
)
def test_malformed_requests_are_400_json(make_client, kwargs, detail):
    client = make_client()
    assert_error(client.post("/predict", **kwargs), 400, "invalid_request", detail)


def test_malformed_batch_request_is_400_json(make_client):
    client = make_client()
    assert_error(client.post("/predict_batch", files={"image": ("a.png", RED)}), 400, "invalid_request", "'images'")


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong-key", "Basic c2VjcmV0", "Bearer"], ids=["missing", "wrong", "basic", "empty"]
)
def test_api_key_required_when_set(make_client, header):
    client = make_client(api_key="s3cret")
    headers = {"Authorization": header} if header else {}
    assert_error(client.post("/predict", files=upload(RED), headers=headers), 401, "unauthorized")
    assert_error(client.get("/model", headers=headers), 401, "unauthorized")
    assert_error(
        client.post("/predict_batch", files=[("images", ("a.png", RED))], headers=headers), 401, "unauthorized"
    )
    ok = client.post("/predict", files=upload(RED), headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["label"] == "red"
    assert client.get("/livez").status_code == 200  # probes stay open for the orchestrator


def test_model_endpoint_serves_the_manifest(make_client, oracle_dir):
    import json

    body = make_client().get("/model").json()
    manifest = json.loads((oracle_dir / "manifest.json").read_text())
    assert body["classes"] == manifest["classes"] == oracle.CLASSES
    assert body["preprocessing"]["size"] == list(oracle.INPUT_SIZE)
    assert body["providers"][-1] == "CPUExecutionProvider"


def test_samples_are_the_manifests_files_and_nothing_else(make_client, oracle_dir):
    client = make_client()
    listed = client.get("/model").json()["samples"]
    assert [s["label"] for s in listed] == oracle.CLASSES
    for sample in listed:
        got = client.get(f"/{sample['file']}")
        assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
        assert got.content == (oracle_dir / sample["file"]).read_bytes()
        # the sample is an image of its class: the model says so
        assert client.post("/predict", files=upload(got.content)).json()["label"] == sample["label"]
    assert_error(client.get("/samples/purple-1.jpg"), 404, "not_found")
    for name in ("..%2Fmanifest.json", "%2E%2E%2Fmodel.onnx", "../manifest.json"):  # never a file beside samples/
        got = client.get(f"/samples/{name}")
        assert got.status_code == 404 and b"classes" not in got.content and b"onnx" not in got.content.lower()
    (oracle_dir / "samples" / "unlisted.jpg").write_bytes(b"x")  # on disk but not in the manifest
    try:
        assert_error(client.get("/samples/unlisted.jpg"), 404, "not_found")
    finally:
        (oracle_dir / "samples" / "unlisted.jpg").unlink()


def test_samples_need_the_api_key_when_one_is_set(make_client):
    client = make_client(api_key="k")
    assert_error(client.get("/samples/red-1.jpg"), 401, "unauthorized")
    assert client.get("/samples/red-1.jpg", headers={"Authorization": "Bearer k"}).status_code == 200


def test_wrong_method_is_json(make_client):
    assert_error(make_client().get("/predict"), 405, "method_not_allowed")


def test_health_and_web_page(make_client):
    client = make_client()
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="file"' in page.text and "/web/app.js" in page.text
    assert client.get("/web/app.js").status_code == 200


def test_metrics_count_predictions_per_label_and_rejections_per_reason(make_client):
    client = make_client(api_key="k")
    before = client.get("/metrics").text
    auth = {"Authorization": "Bearer k"}
    client.post("/predict", files=upload(oracle.object_image("blue", (1, 1, 30, 30))), headers=auth)
    client.post("/predict", files=upload(b"nope"), headers=auth)
    client.post("/predict", files=upload(RED))  # no key
    after = client.get("/metrics").text
    assert (
        counter(after, "clsloc_predictions_total", label="blue")
        == counter(before, "clsloc_predictions_total", label="blue") + 1
    )
    assert (
        counter(after, "clsloc_rejected_total", reason="not_an_image")
        == counter(before, "clsloc_rejected_total", reason="not_an_image") + 1
    )
    assert (
        counter(after, "clsloc_rejected_total", reason="unauthorized")
        == counter(before, "clsloc_rejected_total", reason="unauthorized") + 1
    )
