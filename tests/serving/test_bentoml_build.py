"""``bentoml build`` from bentofile.yaml works offline, packs the pinned model, needs no torch, and runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port, stop_server, wait_ready

pytestmark = pytest.mark.slow
BENTOML = str(Path(sys.executable).with_name("bentoml"))


@pytest.fixture
def bentoml_home(tmp_path, oracle_dir):
    """A fresh BentoML home holding only the oracle model; returns (env, model tag)."""
    home = tmp_path / "bentoml-home"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    store = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from clsloc.training.export import store_in_bentoml; print(store_in_bentoml(sys.argv[1], 'clsloc-build-test'))",
            str(oracle_dir),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert store.returncode == 0, store.stderr
    return env, store.stdout.strip().splitlines()[-1]


def wheel_requirements(wheel: Path) -> set[str]:
    """The distribution names a wheel requires without extras."""
    with zipfile.ZipFile(wheel) as zf:
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(metadata).decode().splitlines()
    return {
        re.split(r"[<>=!~\[ ;(]", line.split(":", 1)[1].strip())[0].lower()
        for line in lines
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }


def test_bentoml_build_packs_service_and_pinned_model_without_torch(bentoml_home, tmp_path):
    env, tag = bentoml_home
    env = {**env, "CLSLOC_MODEL": tag, "PIP_NO_INDEX": "1"}  # offline: nothing may be fetched
    wheel = subprocess.run(
        ["make", "--old-file", ".venv/.installed", "wheel"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wheel.returncode == 0, wheel.stdout[-2000:] + wheel.stderr[-2000:]
    built = subprocess.run(
        [BENTOML, "build", "--output", "tag"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    bento_tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = bento_tag.split(":")
    bento_dir = Path(env["BENTOML_HOME"]) / "bentos" / name / version
    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    assert [m["tag"] for m in info["services"][0]["models"]] == [tag]
    assert {r["route"] for r in info["schema"]["routes"]} == {"/predict", "/predict_batch"}
    # The Bento installs the clsloc wheel, whose own requirements are the torch-free serving install.
    (packed,) = (bento_dir / "env" / "python" / "wheels").glob("clsloc-*.whl")
    packages = wheel_requirements(packed)
    assert {"onnxruntime-gpu", "bentoml", "pillow"} <= packages, packages
    assert not packages & {"torch", "torchvision", "timm", "onnx"}, packages
    with zipfile.ZipFile(packed) as zf:
        names = zf.namelist()
    assert "clsloc/serving/service.py" in names and "clsloc/serving/web/index.html" in names
    src = bento_dir / "src"
    assert not (src / "training").exists() and not (src / "models").exists() and not (src / "tests").exists()

    # The Bento serves: `bentoml serve NAME:VERSION` runs from its own src/ copy.
    port = free_port()
    process = subprocess.Popen(
        [BENTOML, "serve", bento_tag, "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        import oracle

        from clsloc_client import Client

        with Client(f"http://127.0.0.1:{port}") as client:
            assert client.predict(oracle.object_image("green", (10, 10, 50, 50)))["label"] == "green"
            assert client.model_info()["name"] == "clsloc-build-test"
    finally:
        stop_server(process)
