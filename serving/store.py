"""Where a served model comes from: a model directory or a pinned BentoML store tag.

A tag must name its version (``clsloc-default:20261127...``): a deployment
never follows an implicit ``:latest`` that could change under it. ``clsloc
serve`` resolves a bare name to its newest version once, at start, and pins
that.
"""

from __future__ import annotations

from pathlib import Path

from clsloc.manifest import MANIFEST_FILE, MODEL_FILE


class ModelNotFound(LookupError):
    """No model at that directory or tag."""


def is_model_dir(ref: str | Path) -> bool:
    path = Path(ref)
    return path.is_dir() and (path / MODEL_FILE).is_file()


def split_tag(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition(":")
    return name, (version or None)


def looks_like_tag(ref: str) -> bool:
    """A store reference rather than a path: no path separators, not an existing path."""
    return bool(ref) and "/" not in ref and "\\" not in ref and not Path(ref).exists()


def store_path(tag: str) -> Path:
    """The directory of a pinned store tag; refuses ``:latest`` and bare names."""
    import bentoml
    from bentoml.exceptions import NotFound

    name, version = split_tag(tag)
    if version is None or version == "latest":
        raise ModelNotFound(f"model tag {tag!r} must be pinned to a version (NAME:VERSION), never an implicit latest")
    try:
        return Path(bentoml.models.get(tag).path)
    except NotFound:
        raise ModelNotFound(f"model {tag!r} is not in the BentoML store ({store_home()})") from None


def latest_tag(name: str) -> str | None:
    """Newest version of ``name`` in the store (by creation time), or None."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        models = [m for m in bentoml.models.list(name) if m.tag.name == name]
    except NotFound:
        return None
    if not models:
        return None
    return str(max(models, key=lambda m: m.info.creation_time).tag)


def store_home() -> str:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(BentoMLContainer.bentoml_home.get())


def resolve(ref: str) -> Path:
    """A model directory or pinned tag -> directory holding model.onnx + manifest.json."""
    if is_model_dir(ref):
        return Path(ref)
    if Path(ref).exists():
        raise ModelNotFound(f"{ref}: not a model directory (expected {MODEL_FILE} and {MANIFEST_FILE})")
    if not looks_like_tag(ref):
        raise ModelNotFound(f"{ref}: no such model directory")
    return store_path(ref)
