"""The API as a stranger meets it: /docs.json is valid OpenAPI 3 and complete, schemathesis finds
nothing against the live service, Swagger UI is at /docs, and BentoML's own client works."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import oracle
import pytest
from openapi_spec_validator import validate

from clsloc_client import Client

pytestmark = pytest.mark.slow
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def document(live_server) -> dict:
    return httpx.get(f"{live_server}/docs.json").json()


def test_openapi_document_is_valid_and_describes_every_served_route(live_server, document):
    validate(document)  # raises on anything that is not OpenAPI 3
    # BentoML lists what it serves at /schema.json: APIs and the routes of mounted apps.
    served = set(httpx.get(f"{live_server}/schema.json").json()["paths"])
    documented = {path.removesuffix("/{file}") for path in document["paths"]}
    assert served <= documented, served - documented
    predict = document["paths"]["/predict"]["post"]
    body = predict["requestBody"]
    assert body["required"] and body["content"]["multipart/form-data"]["schema"]["required"] == ["image"]
    ok = predict["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"label", "score", "box", "width", "height", "model"} <= set(ok["required"])
    assert {"400", "401", "413", "415", "503"} <= set(predict["responses"])
    assert predict["responses"]["503"]["headers"]["Retry-After"]
    batch = document["paths"]["/predict_batch"]["post"]
    images = batch["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["images"]
    assert images["minItems"] == 1 and images["maxItems"] == 64
    for route in (predict, batch):
        for status, response in route["responses"].items():
            if status.startswith("4"):
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_swagger_ui_at_docs_loads_nothing_from_elsewhere(live_server):
    page = httpx.get(f"{live_server}/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text and "/docs.json" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    for asset in ("/static_content/swagger-ui-bundle.js", "/static_content/swagger-ui.css"):
        assert httpx.get(f"{live_server}{asset}").status_code == 200


def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_schema(live_server, document, tmp_path):
    """Every check schemathesis has, bounded in examples; run from a temporary folder (it keeps a cache)."""
    command = [SCHEMATHESIS, "--config-file", str(CONFIG), "run", f"{live_server}/docs.json"]
    command += ["--checks", "all", "--max-examples", "40", "--seed", "16", "--workers", "1", "--no-color"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]  # no failure of any check
    operations = sum(len(methods) for methods in document["paths"].values())
    assert re.search(rf"Tested:\s+{operations}\b", run.stdout), run.stdout[-3000:]  # /predict among them


def test_bentomls_client_calls_both_endpoints_and_agrees_with_the_sdk(live_server, tmp_path):
    import bentoml

    paths = []
    for i, (label, box) in enumerate([("red", (40, 30, 50, 40)), ("blue", (10, 60, 70, 30))]):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(oracle.object_image(label, box))
    with bentoml.SyncHTTPClient(live_server) as bento, Client(live_server) as ours:
        assert bento.predict(image=paths[0]) == ours.predict(paths[0]).to_dict()
        assert bento.predict_batch(images=paths) == [r.to_dict() for r in ours.predict_batch(paths)]
        assert [r["label"] for r in bento.predict_batch(images=paths)] == ["red", "blue"]
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not an image")
        with pytest.raises(bentoml.exceptions.BentoMLException) as refused:
            bento.predict(image=bad)
        assert refused.value.error_code == 400 and "not_an_image" in str(refused.value)
