"""Where a served model comes from: a model directory, a pinned BentoML store tag, or the Bento's packed model.

A tag must name its version (``clsloc-default:20261127...``): a deployment
never follows an implicit ``:latest`` that could change under it. ``clsloc
serve`` resolves a bare name to its newest version once, at start, and pins
that. A built Bento records the model it packs (bento.yaml), and serves it
when ``CLSLOC_MODEL`` is unset (``choose``).
"""

from __future__ import annotations

import functools
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


def store_path(tag: str, packed: list[str] | None = None) -> Path:
    """The directory of a pinned store tag; refuses ``:latest`` and bare names (errors list what is available)."""
    import bentoml
    from bentoml.exceptions import NotFound

    name, version = split_tag(tag)
    if version is None or version == "latest":
        raise ModelNotFound(
            f"model tag {tag!r} must be pinned to a version (NAME:VERSION), never an implicit latest "
            f"({available_text(packed)})"
        )
    try:
        return Path(bentoml.models.get(tag).path)
    except NotFound:
        where = "neither packed in this Bento nor in" if packed else "not in"
        raise ModelNotFound(
            f"model {tag!r} is {where} the BentoML store ({store_home()}) ({available_text(packed)})"
        ) from None


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


def resolve(ref: str, packed: list[str] | None = None) -> Path:
    """A model directory or pinned tag -> directory holding model.onnx + manifest.json."""
    if is_model_dir(ref):
        return Path(ref)
    if Path(ref).exists():
        raise ModelNotFound(f"{ref}: not a model directory (expected {MODEL_FILE} and {MANIFEST_FILE})")
    if not looks_like_tag(ref):
        raise ModelNotFound(f"{ref}: no such model directory")
    return store_path(ref, packed)


def available_tags(limit: int = 10) -> list[str]:
    """clsloc models in the BentoML store in use, newest first (in a container: the Bento's own store)."""
    import bentoml

    models = [m for m in bentoml.models.list() if m.info.module == "clsloc"]
    models.sort(key=lambda m: m.info.creation_time, reverse=True)
    return [str(m.tag) for m in models[:limit]]


def available_text(packed: list[str] | None = None) -> str:
    """What could be served instead, for an error message."""
    stored = available_tags()
    parts = [f"packed in this Bento: {', '.join(packed)}"] if packed else []
    parts.append(f"in the store: {', '.join(stored)}" if stored else "the store holds no clsloc model")
    return "; ".join(parts)


def packed_tags(bento, service_name: str) -> list[str]:
    """The models a built Bento packs for ``service_name``, as bento.yaml recorded them; [] outside a Bento."""
    if bento is None:
        return []
    return [str(m.tag) for s in bento.info.services if s.name == service_name for m in s.models]


def choose(requested: str, packed: list[str]) -> tuple[Path, str]:
    """The model a service serves -> (its directory, where it came from).

    ``requested`` (CLSLOC_MODEL) wins when set: a model directory, or a pinned
    tag that is packed in the Bento or in the store. Unset, the Bento's packed
    model is served. Anything else is ModelNotFound naming what is available.
    """
    if requested:
        source = "packed in this Bento, chosen by CLSLOC_MODEL" if requested in packed else "CLSLOC_MODEL"
        return resolve(requested, packed), f"{requested} ({source})"
    if len(packed) == 1:
        return store_path(packed[0]), f"{packed[0]} (packed in this Bento)"
    if packed:
        raise ModelNotFound(f"this Bento packs several models: set CLSLOC_MODEL to one ({available_text(packed)})")
    raise ModelNotFound(
        "no model to serve: set CLSLOC_MODEL to a model directory or NAME:VERSION, or serve a Bento built "
        f"with one (CLSLOC_MODEL=NAME:VERSION bentoml build) ({available_text()})"
    )


def declared_model(tag: str):
    """``bentoml.models.BentoModel(tag)``, declared by the service so that `bentoml build` packs it.

    A tag missing from the local store is refused with what the store holds,
    instead of BentoML's attempt at BentoCloud (which clsloc does not use).
    """
    return _local_bento_model()(tag)


@functools.cache
def _local_bento_model() -> type:
    import bentoml
    from bentoml.exceptions import BentoMLException

    class LocalBentoModel(bentoml.models.BentoModel):
        def to_info(self, alias: str | None = None):  # bentoml build
            self._require_local()
            return super().to_info(alias)

        def resolve(self, base_path=None):  # bentoml serve, before the service's own check
            self._require_local()
            return super().resolve(base_path)

        def _require_local(self) -> None:
            if self.stored is None:
                raise BentoMLException(
                    f"model {str(self.tag)!r} is not in the BentoML store ({store_home()}) ({available_text()})"
                )

    return LocalBentoModel
