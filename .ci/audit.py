"""``make audit``: pip-audit over what serving installs, where a vulnerability service can be reached.

What serving installs is the clsloc wheel's base dependencies (``pip install
clsloc``, what a Bento installs) and everything they pull in. This script
pins that closure to the versions in this environment, writes it as a
requirements file, and hands it to pip-audit (``--no-deps``: nothing is
resolved or downloaded again). pip-audit asks PyPI's JSON API (or OSV); where
neither answers, it says so and stops without failing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def serving_closure() -> dict[str, str]:
    """name -> installed version, for the base dependencies and all that they require (no extras)."""
    base = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    environment = {**default_environment(), "extra": ""}
    pinned: dict[str, str] = {}
    todo = [Requirement(line) for line in base]
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        if name in pinned:
            continue
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"make audit: {name} is required by serving but not installed here (run make venv)")
        pinned[name] = distribution.version
        todo += [Requirement(line) for line in distribution.requires or []]
    return pinned


def reachable_service(name: str, version: str) -> str | None:
    """The first service that answers for one pinned package the way pip-audit will ask it, or None.

    A mirror that serves only a package's latest page (``/pypi/NAME/json``) would let every package
    be skipped as "not found" while pip-audit reports no vulnerabilities: ask for a pinned version.
    """
    queries = {
        "pypi": urllib.request.Request(f"https://pypi.org/pypi/{name}/{version}/json"),
        "osv": urllib.request.Request(
            "https://api.osv.dev/v1/query",
            data=json.dumps({"package": {"name": name, "ecosystem": "PyPI"}, "version": version}).encode(),
            headers={"Content-Type": "application/json"},
        ),
    }
    for service, request in queries.items():
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status == 200:
                    return service
        except OSError:
            continue
    return None


def main() -> int:
    pinned = serving_closure()
    service = reachable_service("pillow", pinned["pillow"])
    if service is None:
        print(
            "make audit: SKIPPED - no vulnerability service answers from here (PyPI's JSON API for a pinned "
            f"version, api.osv.dev); the {len(pinned)} serving packages were not checked. "
            "Run it where one of those can be reached."
        )
        return 0
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="serving-requirements-", delete=False) as out:
        out.write("".join(f"{name}=={version}\n" for name, version in sorted(pinned.items())))
    print(f"make audit: {len(pinned)} serving packages ({out.name}), vulnerability service: {service}", flush=True)
    command = [sys.executable, "-m", "pip_audit", "-r", out.name, "--no-deps", "--disable-pip", "-s", service]
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
