"""Installing the distributions adds only ``clsloc`` (and the SDK's ``clsloc_client``) to site-packages.

The product's folders stay at the repository root (``training/``, ``serving/``,
``models/``); the wheel maps them to ``clsloc.training``, ``clsloc.serving`` and
``clsloc.models``, so nothing called ``models`` or ``training`` lands at the top
of anyone's site-packages.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Repository folder -> the package it installs as.
MAPPED = {"clsloc": "clsloc", "training": "clsloc.training", "serving": "clsloc.serving", "models": "clsloc.models"}

pytestmark = pytest.mark.slow


def build_wheel(source: Path, out: Path) -> Path:
    """``pip wheel`` offline (setuptools from this environment), no dependencies."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (wheel,) = out.glob("*.whl")
    return wheel


def installed_top_level(wheel: Path, venv: Path) -> set[str]:
    """Install ``wheel`` (no dependencies) into a fresh venv; the names it added to site-packages."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python3*/site-packages"))
    before = {p.name for p in site.iterdir()}
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    added = {p.name for p in site.iterdir()} - before
    return {name for name in added if not name.endswith((".dist-info", ".pth")) and name != "__pycache__"}


def test_clsloc_wheel_installs_only_clsloc_with_every_subpackage(tmp_path):
    wheel = build_wheel(REPO, tmp_path / "dist")
    assert installed_top_level(wheel, tmp_path / "venv") == {"clsloc"}
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    # Every package folder of the tree is in the wheel under its clsloc name (none forgotten in pyproject).
    for folder, package in MAPPED.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.relative_to(REPO / folder).as_posix()
            assert f"{package.replace('.', '/')}/{relative}" in names, f"{init} is missing from the wheel"
    assert "clsloc/serving/web/index.html" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "clients/")) for n in names)


def test_client_wheel_installs_only_clsloc_client(tmp_path):
    wheel = build_wheel(REPO / "clients", tmp_path / "dist")
    assert installed_top_level(wheel, tmp_path / "venv") == {"clsloc_client"}
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "clsloc_client/py.typed" in names  # type checkers read the SDK's hints only with this marker
    assert "clsloc-client = clsloc_client.cli:main" in entry_points
