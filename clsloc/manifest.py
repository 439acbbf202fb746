"""The exported model's manifest: what serving trusts about a ``model.onnx``.

An exported model is a directory holding ``model.onnx`` and ``manifest.json``
(or the same two files in a BentoML model). The manifest is written once, at
export, by ``clsloc.training.export`` and read by everything that runs the model.

Graph contract (checked by ``clsloc.serving.engine`` against the ONNX file):
  input  ``image``  float32 (N, 3, H, W), preprocessed as ``preprocessing`` says
  output ``logits`` float32 (N, C), C == len(classes)
  output ``boxes``  float32 (N, 4), ``box_format`` (normalized xyxy in [0, 1])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clsloc.preprocess import Preprocessing

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
SAMPLES_DIR = "samples"
BOX_FORMAT = "xyxy_normalized"
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "boxes")


class ManifestError(ValueError):
    """A manifest that is missing, malformed, or inconsistent with its model."""


@dataclass
class Manifest:
    name: str
    version: str
    classes: list[str]
    preprocessing: Preprocessing
    backbone: str
    box_format: str = BOX_FORMAT
    input_name: str = INPUT_NAME
    output_names: tuple[str, str] = OUTPUT_NAMES
    created: str = ""
    precision: str = "fp32"  # or "int8"
    data_fingerprint: str = ""
    head: dict = field(default_factory=dict)  # e.g. {"attach": "map", "per_class": false}
    metrics: dict = field(default_factory=dict)  # {"pytorch": {...}, "onnx": {...}}
    parity: dict = field(default_factory=dict)  # {"max_abs_logit_diff", "min_box_iou", "images", "passed"}
    extra: dict = field(default_factory=dict)
    # What the model is, in a sentence or two, for the people who serve it and the web page.
    description: str = ""
    # A few validation images to try, shipped beside the model: [{"file": "samples/NAME.jpg", "label": ...}].
    samples: list = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if (
            not isinstance(self.classes, (list, tuple))
            or not all(isinstance(c, str) and c for c in self.classes)
            or not self.classes
            or len(set(self.classes)) != len(self.classes)
        ):
            raise ManifestError(f"classes must be a non-empty list of unique names, got {self.classes!r}")
        if self.box_format != BOX_FORMAT:
            raise ManifestError(f"box_format {self.box_format!r} is not supported (known: {BOX_FORMAT!r})")
        self.output_names = tuple(self.output_names)
        for sample in self.samples:
            file = sample.get("file", "") if isinstance(sample, dict) else ""
            if not file.startswith(f"{SAMPLES_DIR}/") or "/" in file[len(SAMPLES_DIR) + 1 :] or ".." in file:
                raise ManifestError(f"sample {sample!r} must name a file directly inside {SAMPLES_DIR}/")

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    def summary(self) -> str:
        """What someone serving this model should know first: what it is, its classes, its validation numbers."""
        lines = [
            f"model {self.tag} ({self.backbone}, {self.precision}, input {self.preprocessing.size[1]}x{self.preprocessing.size[0]})"
        ]
        if self.description:
            lines.append(f"  {self.description}")
        lines.append(f"  classes ({len(self.classes)}): {', '.join(self.classes)}")
        onnx = self.metrics.get("onnx") or {}
        if onnx.get("n"):
            numbers = ", ".join(
                f"{key.replace('_', ' ')} {onnx[key]:.3f}"
                for key in ("accuracy", "mean_iou", "loc_accuracy")
                if onnx.get(key) is not None
            )
            lines.append(f"  validation ({onnx['n']} images, as exported): {numbers}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        d["output_names"] = list(self.output_names)
        return d

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "manifest") -> Manifest:
        if not isinstance(d, dict):
            raise ManifestError(f"{source}: expected a JSON object, got {type(d).__name__}")
        version = d.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ManifestError(
                f"{source}: format_version {version!r} is not supported (this clsloc reads {FORMAT_VERSION})"
            )
        missing = [k for k in ("name", "version", "classes", "preprocessing", "backbone") if k not in d]
        if missing:
            raise ManifestError(f"{source}: missing field(s) {', '.join(missing)}")
        d = dict(d)
        try:
            d["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"{source}: field 'preprocessing': {exc}") from exc
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ManifestError(f"{source}: unknown field(s) {', '.join(sorted(unknown))}")
        try:
            return cls(**d)
        except ManifestError as exc:
            raise ManifestError(f"{source}: {exc}") from exc

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> Manifest:
        path = Path(model_dir) / MANIFEST_FILE
        if not path.is_file():
            raise ManifestError(
                f"{path}: no manifest (an exported model directory holds {MODEL_FILE} and {MANIFEST_FILE})"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, source=str(path))
