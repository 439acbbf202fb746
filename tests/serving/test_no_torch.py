"""Serving and the client SDK never import torch (the serving image installs without it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_no_torch_import_statement_in_serving_or_client():
    offenders = []
    for path in [*REPO.glob("serving/**/*.py"), *REPO.glob("clients/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            offenders += [
                f"{path.relative_to(REPO)}: {n}"
                for n in names
                if n.split(".")[0] in ("torch", "torchvision") or n.startswith(("clsloc.models", "clsloc.training"))
            ]
    assert not offenders, offenders


def test_importing_service_engine_cli_and_client_loads_no_torch(oracle_dir):
    code = (
        "import os, sys; os.environ['CLSLOC_MODEL'] = sys.argv[1]\n"
        "import clsloc.serving.engine, clsloc.serving.service, clsloc.serving.cli, clsloc_client\n"
        "clsloc.serving.engine.Engine(sys.argv[1]).predict_many([b'x'])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(oracle_dir)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
