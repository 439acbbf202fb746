"""Direct calls to the service class, no HTTP: what BentoML wires is plain Python underneath."""

from __future__ import annotations

import asyncio

import oracle
import pytest


@pytest.fixture
def service(serving_env):
    from clsloc.serving.service import Clsloc

    return Clsloc()  # BentoML's Service object builds an instance of the class


def test_predict_method(service, tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(oracle.object_image("green", (30, 20, 60, 50)))
    result = asyncio.run(service.predict(image=path))
    assert result["label"] == "green"
    assert result["model"] == {"name": "oracle", "version": "1"}
    assert abs(result["box"]["x"] - 30) < 3 and abs(result["box"]["h"] - 50) < 3


def test_predict_method_answers_bad_input_with_a_4xx_response(service, tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    response = asyncio.run(service.predict(image=path))
    assert response.status_code == 400
    assert response.headers["x-clsloc-error"] == "truncated"


def test_predict_batch_method(service, tmp_path):
    paths = []
    for i, (_label, data) in enumerate(
        [
            ("red", oracle.object_image("red", (1, 1, 40, 40))),
            (None, b"x"),
            ("blue", oracle.object_image("blue", (100, 70, 40, 40))),
        ]
    ):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(data)
    results = service.predict_batch(paths)
    assert [r.get("label") for r in results] == ["red", None, "blue"]
    assert results[1]["status"] == 400


def test_service_refuses_to_start_without_a_model(serving_env):
    from clsloc.serving.service import Clsloc
    from clsloc.serving.store import ModelNotFound

    serving_env.delenv("CLSLOC_MODEL")
    with pytest.raises(ModelNotFound, match="CLSLOC_MODEL"):
        Clsloc()


def test_service_refuses_an_unpinned_store_tag(serving_env):
    from clsloc.serving.service import Clsloc
    from clsloc.serving.store import ModelNotFound

    serving_env.setenv("CLSLOC_MODEL", "clsloc-default:latest")
    with pytest.raises(ModelNotFound, match="pinned to a version"):
        Clsloc()
