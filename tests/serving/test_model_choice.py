"""Which model a service serves: CLSLOC_MODEL, else the Bento's packed model; otherwise a clear refusal."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from clsloc.serving import store


@pytest.fixture(scope="module")
def stored(oracle_dir) -> str:
    """The oracle model in the tests' BentoML store."""
    from clsloc.training.export import store_in_bentoml

    return store_in_bentoml(oracle_dir, "clsloc-choice")


def bento_packing(*tags: str, service: str = "clsloc"):
    """Enough of a loaded Bento for packed_tags: bento.info.services[].models[].tag."""
    models = [SimpleNamespace(tag=tag) for tag in tags]
    services = [SimpleNamespace(name="other-service", models=[SimpleNamespace(tag="x:1")])]
    return SimpleNamespace(info=SimpleNamespace(services=[*services, SimpleNamespace(name=service, models=models)]))


def test_packed_tags_are_this_services_models_and_none_outside_a_bento():
    assert store.packed_tags(bento_packing("a:1"), "clsloc") == ["a:1"]
    assert store.packed_tags(None, "clsloc") == []


def test_the_packed_model_is_served_when_clsloc_model_is_unset(stored):
    path, source = store.choose("", [stored])
    assert (path / "model.onnx").is_file() and path.parent.name == "clsloc-choice"
    assert source == f"{stored} (packed in this Bento)"


def test_clsloc_model_overrides_the_packed_model(stored, oracle_dir):
    assert store.choose(str(oracle_dir), [stored]) == (Path(oracle_dir), f"{oracle_dir} (CLSLOC_MODEL)")
    path, source = store.choose(stored, ["clsloc-somethingelse:3"])
    assert path.parent.name == "clsloc-choice" and source == f"{stored} (CLSLOC_MODEL)"


@pytest.mark.parametrize(
    ("requested", "packed", "message"),
    [
        ("clsloc-nope:1", ["PACKED"], "model 'clsloc-nope:1' is neither packed in this Bento nor in the BentoML store"),
        ("clsloc-nope:1", [], "model 'clsloc-nope:1' is not in the BentoML store"),
        ("clsloc-choice", ["PACKED"], "model tag 'clsloc-choice' must be pinned to a version (NAME:VERSION)"),
        ("", [], "no model to serve: set CLSLOC_MODEL to a model directory or NAME:VERSION"),
        ("/no/such/dir", ["PACKED"], "/no/such/dir: no such model directory"),
    ],
)
def test_a_model_that_is_nowhere_is_refused_naming_what_is_available(stored, requested, packed, message):
    packed = [stored if tag == "PACKED" else tag for tag in packed]
    with pytest.raises(store.ModelNotFound) as caught:
        store.choose(requested, packed)
    text = str(caught.value)
    assert message in text, text
    if requested.startswith("/"):
        return  # a path: no list of tags helps there
    assert stored in text.partition("in the store: ")[2], text
    if packed:
        assert f"packed in this Bento: {stored}" in text, text


def test_the_start_up_check_refuses_with_a_bentoml_error(serving_env, oracle_dir, tmp_path):
    """What `bentoml serve` prints and exits 1 on (tests/serving/test_bentoml_build runs it for real)."""
    from bentoml.exceptions import BentoMLException

    from clsloc.serving.service import Clsloc

    Clsloc.inner.check_model()  # the oracle directory: accepted
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    (tmp_path / "manifest.json").write_bytes((oracle_dir / "manifest.json").read_bytes())
    for bad, reason in (("clsloc-nope:1", "is not in the BentoML store"), (str(tmp_path), "not a loadable ONNX")):
        serving_env.setenv("CLSLOC_MODEL", bad)
        with pytest.raises(BentoMLException, match=f"the model cannot be served: .*{reason}"):
            Clsloc.inner.check_model()


def test_the_declared_model_is_packed_from_the_local_store_or_refused_naming_it(stored):
    """What `bentoml build` sees: the tag's model info, or a refusal (not an attempt at BentoCloud)."""
    from bentoml.exceptions import BentoMLException

    assert str(store.declared_model(stored).to_info().tag) == stored
    assert str(store.declared_model("clsloc-choice").to_info().tag) == stored  # a bare name: newest, pinned
    missing = store.declared_model("clsloc-nope:1")
    for step in (missing.to_info, missing.resolve):
        with pytest.raises(BentoMLException, match=f"model 'clsloc-nope:1' is not in the BentoML store .*{stored}"):
            step()
