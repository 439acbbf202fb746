"""``clsloc serve``: which model it pins, its errors, and the default model made on first use."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from clsloc.serving import cli, store


@pytest.fixture
def stored_oracle(oracle_dir, tmp_path):
    """Two versions of the oracle model in the (temporary) BentoML store, returns (older, newer) tags."""
    from clsloc.manifest import Manifest
    from clsloc.training.export import store_in_bentoml

    tags = []
    for version in ("1", "2"):
        copy = tmp_path / f"v{version}"
        shutil.copytree(oracle_dir, copy)
        manifest = Manifest.load(copy)
        manifest.version = f"cli-test-{tmp_path.name[-6:]}-{version}".lower()
        manifest.save(copy)
        tags.append(store_in_bentoml(copy, "clsloc-cli-test"))
    return tags


def test_model_directory_is_served_as_is(oracle_dir):
    assert cli.resolve_model(str(oracle_dir)) == str(oracle_dir.resolve())


def test_bare_name_is_pinned_to_its_newest_version(stored_oracle):
    older, newer = stored_oracle
    assert cli.resolve_model("clsloc-cli-test") == newer
    assert cli.resolve_model("clsloc-cli-test:latest") == newer  # resolved once, here, then pinned
    assert cli.resolve_model(older) == older


def test_unknown_name_and_version_are_clear_errors(stored_oracle):
    with pytest.raises(store.ModelNotFound, match="clsloc export RUN_DIR --out MODEL_DIR --bentoml nobody"):
        cli.resolve_model("nobody", create_default=False)
    with pytest.raises(store.ModelNotFound, match="not in the BentoML store"):
        cli.resolve_model("clsloc-cli-test:0000")


def test_serve_command_refuses_a_directory_that_is_not_a_model(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "clsloc.cli", "serve", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "not a model directory" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_default_model_is_made_on_synthetic_data_when_the_store_has_none(monkeypatch, capfd):
    # A small recipe: the real default differs only in size (DEFAULT_RECIPE).
    monkeypatch.setattr(
        cli, "DEFAULT_RECIPE", {"images": 24, "classes": 2, "epochs": 1, "image_size": 64, "cache_views": 2}
    )
    monkeypatch.setattr(cli, "DEFAULT_MODEL", "clsloc-default-test")
    tag = cli.resolve_model("clsloc-default-test")
    assert tag.startswith("clsloc-default-test:")
    out = capfd.readouterr().out
    assert "$ clsloc data synth" in out and "$ clsloc train" in out and "$ clsloc export" in out
    from clsloc.serving.engine import Engine

    engine = Engine(store.store_path(tag), threads=1)
    assert len(engine.classes) == 2 and engine.manifest.parity["passed"]
    # it says what it is, and ships a validation image of each class to try
    assert engine.manifest.description == cli.DEFAULT_DESCRIPTION
    assert sorted({s["label"] for s in engine.manifest.samples}) == engine.classes
    assert all((engine.model_dir / s["file"]).is_file() for s in engine.manifest.samples)
    cli.describe(tag)
    said = capfd.readouterr().out
    assert "synthetic shapes" in said and "classes (2)" in said and "validation (" in said
    assert "clsloc export runs/mine --out models/mine --bentoml mine" in said
    # second start: found in the store, nothing made again
    assert cli.resolve_model("clsloc-default-test") == tag
    assert "$ clsloc" not in capfd.readouterr().out
