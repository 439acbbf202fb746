"""Security promises: secrets stay out of logs and bodies, errors carry no internals, no code runs from a file.

(Checkpoints loading weights only: tests/training/test_checkpoint_security.py.
The built Bento's container user and its never-unpickling model load are
tested with the Bento itself; ``clsloc score``'s output paths with scoring.)
"""

from __future__ import annotations

import oracle
import pytest
from conftest import running_server
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from clsloc.serving.http import ApiGuard
from clsloc.serving.settings import Settings

KEY = "s3cret-KEY-9f8e7d6c"
TRIED = "Bearer guess-KEY-0000"


@pytest.mark.slow
def test_the_api_key_never_reaches_a_log_or_a_body(oracle_dir, tmp_path):
    import httpx

    log = tmp_path / "server.log"
    image = {"image": ("a.png", oracle.object_image("red", (10, 10, 40, 40)))}
    with (
        running_server(str(oracle_dir), env={"CLSLOC_API_KEY": KEY}, log=log) as url,
        httpx.Client(base_url=url) as http,
    ):
        refusals = [
            http.post("/predict", files=image),
            http.post("/predict", files=image, headers={"Authorization": TRIED}),
            http.post("/predict", files=image, headers={"Authorization": f"Bearer {KEY[:-1]}"}),  # all but one char
            http.get("/model", headers={"Authorization": f"Basic {KEY}"}),
        ]
        answered = http.post("/predict", files=image, headers={"Authorization": f"Bearer {KEY}"})
        bad_image = http.post(
            "/predict", files={"image": ("a.png", b"junk")}, headers={"Authorization": f"Bearer {KEY}"}
        )
    assert answered.status_code == 200 and bad_image.status_code == 400
    assert [r.status_code for r in refusals] == [401] * 4
    # A wrong key, a nearly right one and a wrong scheme get the same answer: nothing to learn from it.
    assert len({r.text for r in refusals[1:]}) == 1
    for response in [*refusals, answered, bad_image]:
        assert KEY not in response.text and KEY[:8] not in response.text and "guess" not in response.text
        assert not any(KEY in value for value in response.headers.values())
    text = log.read_text()
    assert "POST /predict" in text or "path=/predict" in text  # the access log did see these requests
    assert KEY not in text and KEY[:8] not in text and "guess-KEY" not in text


def inner_app(status: int, body: str, headers: dict | None = None):
    async def answer(_request):
        return PlainTextResponse(body, status_code=status, headers=headers)

    return Starlette(routes=[Route("/predict_batch", answer, methods=["POST"]), Route("/web/x", answer)])


@pytest.mark.parametrize(
    "status,body,headers,error",
    [
        (500, "Traceback (most recent call last): File /srv/secret_path.py, password=hunter2", None, "server_error"),
        (503, "process is overloaded", None, "overloaded"),
        (404, "Not Found", None, "not_found"),
        (405, "Method Not Allowed", {"Allow": "GET"}, "method_not_allowed"),
    ],
    ids=["500-internals", "503-from-batching", "404", "405"],
)
def test_errors_from_below_the_service_get_the_api_shape_and_no_internals(status, body, headers, error):
    guard = ApiGuard(
        inner_app(status, body, headers), protected=("/predict_batch",), settings=Settings(max_batch_images=4)
    )
    client = TestClient(guard)
    for path, method in (("/predict_batch", "post"), ("/web/x", "get")):
        kwargs = {"files": {"images": ("a.png", b"x")}} if method == "post" else {}
        response = getattr(client, method)(path, **kwargs)
        assert response.status_code == status
        assert set(response.json()) == {"error", "detail"} and response.json()["error"] == error
        assert "secret" not in response.text and "hunter2" not in response.text and "Traceback" not in response.text
        if status == 503:
            assert response.headers["retry-after"] == "1"
        if headers:
            assert response.headers["allow"] == "GET"
