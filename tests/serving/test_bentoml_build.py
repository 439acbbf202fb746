"""A Bento built once serves its packed model anywhere, with nothing else to set.

One Bento is built (offline, from bentofile.yaml) in a temporary BENTOML_HOME,
then served from another directory with a clean environment: no CLSLOC_*
variable at all. The tests read what the image would be from the generated
files (docker is not on this machine): the torch-free wheel, the CUDA libraries
as pip wheels, a non-root user.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
import zipfile
from pathlib import Path

import httpx
import oracle
import pytest
import yaml
from conftest import REPO, SERVERS, free_port, running_server, stop_server, wait_ready, worker_pids

from clsloc_client import Client, ModelRef

pytestmark = pytest.mark.slow
BENTOML = str(Path(sys.executable).with_name("bentoml"))
PACKED = "clsloc-build-test:1"  # the oracle model, packed into the Bento
OTHER = "clsloc-other:1"  # the oracle model again, in the store only: the CLSLOC_MODEL override
TORCH = {"torch", "torchvision", "timm", "onnx"}
IMAGES = {
    "red.png": oracle.object_image("red", (40, 30, 50, 40)),
    "green.jpg": oracle.object_image("green", (10, 10, 50, 50), fmt="JPEG"),
    "blue-rotated.jpg": oracle.object_image("blue", (20, 10, 60, 30), exif_orientation=6),
}

# Every Python process of the served Bento (server and workers) loads this first: it logs each
# unpickling (CPython's "pickle.find_class" audit event, raised by pickle and _pickle alike, which
# is how a pickle reaches code) and each file opened in the model store.
AUDIT_HOOK = """
import os, sys

_LOG = os.environ["SERVE_AUDIT_LOG"]
_MODELS = os.path.join(os.environ["BENTOML_HOME"], "models") + os.sep

def _write(line):
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (line + "\\n").encode())
    os.close(fd)

def _hook(event, args):
    if event == "pickle.find_class":
        _write(f"unpickle {os.getpid()} {args[0]}.{args[1]}")
    elif event == "open" and isinstance(args[0], (str, bytes)):
        path = os.fsdecode(args[0])
        if path.startswith(_MODELS):
            _write(f"open {os.getpid()} {path}")

sys.addaudithook(_hook)
"""


def bentoml_env(home: Path) -> dict:
    """The environment of the BentoML commands here: this test's home, no CLSLOC_* at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLSLOC_", "BENTOML_", "PROMETHEUS_"))}
    return {**env, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}


def clean_env(home: Path, **extra: str) -> dict:
    """What a new machine would have: a PATH, a HOME, a BENTOML_HOME. Nothing from this test run."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home.parent),
        "LANG": "C.UTF-8",
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        **extra,
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory, oracle_dir):
    """The oracle model stored as PACKED and OTHER in a fresh home; a Bento built packing PACKED."""
    home = tmp_path_factory.mktemp("bento") / "bentoml-home"
    env = bentoml_env(home)
    code = (
        "import sys; from clsloc.training.export import store_in_bentoml\n"
        "for name in sys.argv[2:]: store_in_bentoml(sys.argv[1], name)"
    )
    names = [tag.split(":")[0] for tag in (PACKED, OTHER)]
    subprocess.run([sys.executable, "-c", code, str(oracle_dir), *names], env=env, check=True, timeout=120)
    build_env = {**env, "CLSLOC_MODEL": PACKED, "PIP_NO_INDEX": "1"}  # offline: nothing may be fetched
    wheel = subprocess.run(
        ["make", "--old-file", ".venv/.installed", "wheel"],
        cwd=REPO,
        env=build_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wheel.returncode == 0, wheel.stdout[-2000:] + wheel.stderr[-2000:]
    result = subprocess.run(
        [BENTOML, "build", "--output", "tag"], cwd=REPO, env=build_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    return {"home": home, "tag": tag, "dir": home / "bentos" / name / version}


@pytest.fixture(scope="module")
def context(built, tmp_path_factory) -> Path:
    """What `bentoml containerize` hands to docker build: the Bento, its models copied in, the Dockerfile."""
    out = tmp_path_factory.mktemp("context") / "bento"
    code = (
        "import shutil, sys, bentoml\n"
        "from bentoml._internal.container import construct_containerfile\n"
        "with construct_containerfile(bentoml.get(sys.argv[1]), enable_buildkit=False) as (ctx, _):\n"
        "    shutil.copytree(ctx, sys.argv[2])\n"
    )
    env = bentoml_env(built["home"])
    subprocess.run([sys.executable, "-c", code, built["tag"], str(out)], env=env, check=True, timeout=120)
    return out


def wheel_requirements(wheel: Path, extra: str | None = None) -> dict[str, str]:
    """Distribution name -> requirement line, of a wheel's base requirements (or of one extra)."""
    with zipfile.ZipFile(wheel) as zf:
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(metadata).decode().splitlines()
    requirements = {}
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        spec, _, marker = line.split(":", 1)[1].strip().partition(";")
        if (extra is None and "extra ==" not in marker) or (extra and f'extra == "{extra}"' in marker):
            requirements[re.split(r"[<>=!~\[ (]", spec)[0].lower()] = spec.strip()
    return requirements


def test_bento_packs_the_model_and_the_torch_free_wheel(built):
    info = yaml.safe_load((built["dir"] / "bento.yaml").read_text())
    assert [m["tag"] for m in info["services"][0]["models"]] == [PACKED]  # the build-time tag, recorded
    assert {r["route"] for r in info["schema"]["routes"]} == {"/predict", "/predict_batch"}
    (packed,) = (built["dir"] / "env" / "python" / "wheels").glob("clsloc-*.whl")
    packages = set(wheel_requirements(packed))
    assert {"onnxruntime-gpu", "bentoml", "pillow"} <= packages, packages
    assert not packages & TORCH, packages
    with zipfile.ZipFile(packed) as zf:
        names = zf.namelist()
    assert "clsloc/serving/service.py" in names and "clsloc/serving/web/index.html" in names
    # Imports come from the installed wheel: the Bento's own source folder holds its build file only.
    assert [p.name for p in (built["dir"] / "src").iterdir()] == ["bentofile.yaml"]


def test_bento_image_installs_the_cuda_libraries_as_wheels_and_no_torch(context):
    env_dir = context / "env"
    requirements = (env_dir / "python" / "requirements.txt").read_text().split()
    (packed,) = (env_dir / "python" / "wheels").glob("clsloc-*.whl")
    gpu_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    # The image installs clsloc's gpu extra (one list, in pyproject.toml) beside the packed wheel ...
    assert [r for r in requirements if not r.startswith("bentoml==")] == gpu_extra
    assert wheel_requirements(packed, "gpu") == {"onnxruntime-gpu": gpu_extra[0]}
    # ... which is onnxruntime-gpu with its own CUDA and cuDNN wheels: the CUDA provider can load
    # in a plain python image (clsloc.serving.engine picks it when /dev/nvidia* exists).
    assert re.fullmatch(r"onnxruntime-gpu\[cuda,cudnn\].*", gpu_extra[0])
    generated = "\n".join(p.read_text() for p in [*env_dir.glob("docker/*"), *env_dir.glob("python/*.*")])
    assert not re.search(r"\b(torch|torchvision|timm)\b", generated)
    dockerfile = (env_dir / "docker" / "Dockerfile").read_text()
    # The NVIDIA container toolkit mounts the driver's CUDA library for the "compute" capability only.
    assert re.search(r"^ENV NVIDIA_DRIVER_CAPABILITIES=\$NVIDIA_DRIVER_CAPABILITIES$", dockerfile, re.M)
    assert re.search(r"^ARG NVIDIA_DRIVER_CAPABILITIES=compute,utility$", dockerfile, re.M)


def test_bento_container_runs_as_a_non_root_user(context):
    lines = (context / "env" / "docker" / "Dockerfile").read_text().splitlines()
    args = dict(re.match(r"ARG (\w+)=(\S+)", line).groups() for line in lines if re.match(r"ARG \w+=\S+", line))
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    entrypoint = next(i for i, line in enumerate(lines) if line.startswith("ENTRYPOINT"))
    last_user = max(i for i, line in enumerate(lines) if line.startswith("USER "))
    assert last_user < entrypoint and users[-1] == args["BENTO_USER"] == "bentoml"
    assert int(args["BENTO_USER_UID"]) > 0 and int(args["BENTO_USER_GID"]) > 0
    assert any(re.search(r"useradd .*-u \$BENTO_USER_UID .*\$BENTO_USER", line) for line in lines)


@contextlib.contextmanager
def serve_bento(bento: str, env: dict, cwd: Path, log: Path):
    """``bentoml serve BENTO`` (a tag or a folder) on a free loopback port until ready; always stopped."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [BENTOML, "serve", bento, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_ready(url, process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; server log:\n{log.read_text()[-3000:]}") from None
        SERVERS[url] = process  # conftest.worker_pids(url) finds its workers
        yield url
    finally:
        SERVERS.pop(url, None)
        stop_server(process)


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    """A folder holding the audit hook as sitecustomize.py, and the log it writes."""
    folder = tmp_path_factory.mktemp("audit")
    (folder / "sitecustomize.py").write_text(textwrap.dedent(AUDIT_HOOK))
    return folder, folder / "events.log"


@pytest.fixture(scope="module")
def served(built, audit, tmp_path_factory):
    """The Bento served from an unrelated folder, clean environment, audit hook in every process."""
    folder, events = audit
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    env = clean_env(built["home"], PYTHONPATH=str(folder), SERVE_AUDIT_LOG=str(events))
    with serve_bento(built["tag"], env, elsewhere, elsewhere / "server.log") as url:
        yield url


def answers(url: str) -> dict:
    with Client(url) as client:
        return {name: client.predict(data) for name, data in IMAGES.items()} | {
            "batch": client.predict_batch(list(IMAGES.values()))
        }


def test_bento_serves_its_packed_model_with_nothing_set(served, built):
    with Client(served) as client:
        assert client.health()  # /readyz
        answer = client.predict(IMAGES["red.png"])
        info = client.model_info()
    assert answer.label == "red" and answer.model == ModelRef("clsloc-build-test", "1")
    stored = json.loads((built["home"] / "models" / "clsloc-build-test" / "1" / "manifest.json").read_text())
    assert {k: v for k, v in info.items() if k != "providers"} == stored


def test_the_bentos_workers_start_with_the_services_malloc_arena_bound(served):
    # Served with nothing set, as on a new machine: the value comes from the service's declared envs.
    import psutil

    pids = worker_pids(served)
    assert pids and {psutil.Process(pid).environ().get("MALLOC_ARENA_MAX") for pid in pids} == {"2"}


def test_bento_and_clsloc_serve_give_the_same_answers(served, built, tmp_path):
    from_bento = answers(served)
    # `clsloc serve` of the same tag, from the same store, in a home of its own (its own metrics folder).
    home = tmp_path / "clsloc-serve-home"
    home.mkdir()
    (home / "models").symlink_to(built["home"] / "models", target_is_directory=True)
    with running_server(PACKED, env={"BENTOML_HOME": str(home)}) as url:
        from_clsloc_serve = answers(url)
    assert from_bento == from_clsloc_serve
    assert [a.label for a in from_bento["batch"]] == ["red", "green", "blue"]


def test_clsloc_model_overrides_the_packed_model(built, tmp_path):
    env = clean_env(built["home"], CLSLOC_MODEL=OTHER)
    with serve_bento(built["tag"], env, tmp_path, tmp_path / "server.log") as url, Client(url) as client:
        assert client.predict(IMAGES["red.png"]).model == ModelRef("clsloc-other", "1")


def model_files(model_dir: Path) -> set[str]:
    return {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()}


SAMPLES = {f"samples/{label}-1.jpg" for label in oracle.CLASSES}  # the oracle's sample images


def test_the_container_serves_the_model_copied_into_it(context, tmp_path):
    """The image's start: `bentoml serve $BENTO_PATH` with the Dockerfile's environment, an empty store."""
    stored = context / "models" / "clsloc-build-test" / "1"
    assert model_files(stored) == {"model.yaml", "manifest.json", "model.onnx", *SAMPLES}
    dockerfile = (context / "env" / "docker" / "Dockerfile").read_text()
    assert "ENV BENTOML_CONTAINERIZED=true" in dockerfile
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    env = clean_env(empty_home, BENTO_PATH=str(context), BENTOML_CONTAINERIZED="true")
    with serve_bento(str(context), env, context, tmp_path / "server.log") as url, Client(url) as client:
        assert client.predict(IMAGES["green.jpg"]).model == ModelRef("clsloc-build-test", "1")
    assert not (empty_home / "models").exists() or not any((empty_home / "models").iterdir())


def refused_port(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("clsloc-missing:9", "model 'clsloc-missing:9' is neither packed in this Bento nor in the BentoML store"),
        ("clsloc-build-test", "model tag 'clsloc-build-test' must be pinned to a version"),
        ("CORRUPT", "model.onnx: not a loadable ONNX model"),
    ],
    ids=["unknown-tag", "unpinned-tag", "corrupt-model"],
)
def test_a_model_that_cannot_be_served_stops_the_server_at_once_with_the_reason(built, tmp_path, model, reason):
    if model == "CORRUPT":  # a manifest beside a file that is not ONNX
        (tmp_path / "corrupt").mkdir()
        manifest = built["home"] / "models" / "clsloc-other" / "1" / "manifest.json"
        (tmp_path / "corrupt" / "manifest.json").write_bytes(manifest.read_bytes())
        (tmp_path / "corrupt" / "model.onnx").write_bytes(b"not onnx")
        model = str(tmp_path / "corrupt")
    port = free_port()
    started = time.monotonic()
    result = subprocess.run(
        [BENTOML, "serve", built["tag"], "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(built["home"], CLSLOC_MODEL=model),
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0 and took < 60, (result.returncode, took, output)
    assert refused_port(port)  # it never listened: nothing looked alive
    assert "the model cannot be served: " in output and reason in output, output
    if not model.startswith("/"):  # a tag: the error names what could be served instead
        assert f"packed in this Bento: {PACKED}" in output and OTHER in output, output
    assert "Traceback" not in output, output


def test_serving_a_bento_never_unpickles(served, audit, built):
    """Serving reads ONNX, JSON and YAML only: no unpickling in any process, no other file of the model."""
    folder, events = audit
    answers(served)  # every route that touches the model, after start-up
    sample = httpx.get(f"{served}/samples/red-1.jpg", timeout=30)
    assert sample.status_code == 200 and sample.content[:2] == b"\xff\xd8"
    lines = events.read_text().splitlines()
    assert not [line for line in lines if line.startswith("unpickle")], lines
    # Python opened the store's YAML, the manifest and a sample image (onnxruntime reads model.onnx
    # from C++) ...
    models = built["home"] / "models"
    opened = {Path(line.split(" ", 2)[2]).relative_to(models).as_posix() for line in lines if line.startswith("open")}
    assert opened == {f"clsloc-build-test/1/{name}" for name in ("model.yaml", "manifest.json", "samples/red-1.jpg")}
    stored = models / "clsloc-build-test" / "1"
    # ... and the packed model holds nothing else that could be read.
    assert model_files(stored) == {"model.yaml", "manifest.json", "model.onnx", *SAMPLES}
    # The hook does see unpickling when it happens (so the empty list above means something).
    control = subprocess.run(
        [sys.executable, "-c", "import pickle, collections; pickle.loads(pickle.dumps(collections.OrderedDict()))"],
        env=clean_env(built["home"], PYTHONPATH=str(folder), SERVE_AUDIT_LOG=str(folder / "control.log")),
        timeout=60,
    )
    assert control.returncode == 0
    assert "unpickle" in (folder / "control.log").read_text()
