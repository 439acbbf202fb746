"""The serving side never imports torch: every module of ``clsloc`` and ``clsloc.serving`` imports with torch blocked.

A fresh interpreter installs an import hook that refuses ``torch`` and
``torchvision`` (as if they were not installed) and records who asked; then it
imports every module found by walking the two packages with pkgutil. Any
module that fails, or any attempt to import torch at all, fails the test.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    import importlib, importlib.abc, json, pkgutil, sys, traceback

    BLOCKED = ("torch", "torchvision")
    attempts = []

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                stack = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()[:-1]
                         if "importlib" not in f.filename and "<frozen" not in f.filename]
                attempts.append({"name": name, "from": stack[-3:]})
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the torch-free test)", name=name)
            return None

    sys.meta_path.insert(0, BlockTorch())

    modules, failures = [], {}
    for package_name in ("clsloc", "clsloc.serving"):
        try:
            package = importlib.import_module(package_name)
        except Exception as exc:
            failures[package_name] = f"{type(exc).__name__}: {exc}"
            continue
        modules.append(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=package_name + ".",
                                          onerror=lambda name: failures.setdefault(name, "walk failed")):
            try:
                importlib.import_module(info.name)
                modules.append(info.name)
            except Exception as exc:
                failures[info.name] = f"{type(exc).__name__}: {exc}"
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"modules": modules, "failures": failures, "attempts": attempts, "loaded": loaded}))
    """
)


def test_clsloc_and_serving_import_without_torch():
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={"BENTOML_DO_NOT_TRACK": "true", "PATH": "/usr/bin:/bin", "HOME": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # the walk really covered the core (and serving, whatever of it exists)
    for module in (
        "clsloc.boxes",
        "clsloc.images",
        "clsloc.datasets.voc",
        "clsloc.metrics",
        "clsloc.synth",
        "clsloc.data_cli",
        "clsloc.runs",
        "clsloc.serving.scoring.score_cli",
        "clsloc.serving.scoring.evaluate_cli",
        "clsloc.serving.scoring.ray_runner",
        "clsloc.serving.scoring.report",
    ):
        assert module in report["modules"], report
    assert "clsloc.serving" in report["modules"], report["failures"]
    assert report["failures"] == {}, json.dumps(report["failures"], indent=2)
    assert report["attempts"] == [], json.dumps(report["attempts"], indent=2)
    assert report["loaded"] == []
