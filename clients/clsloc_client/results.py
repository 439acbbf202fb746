"""Typed answers of the service: :class:`Prediction`, its :class:`Box` and :class:`ModelRef`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Box:
    """One box in pixels of the image as displayed (EXIF orientation applied): top-left corner, width, height."""

    x: float
    y: float
    w: float
    h: float

    def xyxy(self) -> tuple[float, float, float, float]:
        """The corners ``(x0, y0, x1, y1)``, the form torchvision and Pillow's ``ImageDraw`` take."""
        return (self.x, self.y, self.x + self.w, self.y + self.h)

    @property
    def area(self) -> float:
        return self.w * self.h

    def to_dict(self) -> dict[str, float]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h}


@dataclass(frozen=True)
class ModelRef:
    """The model that answered: its name and pinned version."""

    name: str
    version: str


@dataclass(frozen=True)
class Prediction:
    """What the main object of one image is (``label``, ``score``) and where it is (``box``).

    ``width`` and ``height`` are those of the image as displayed, the frame of ``box``.
    """

    label: str
    score: float
    box: Box
    width: int
    height: int
    model: ModelRef

    def to_dict(self) -> dict[str, Any]:
        """The service's JSON for this answer (``POST /predict``)."""
        return {
            "label": self.label,
            "score": self.score,
            "box": self.box.to_dict(),
            "width": self.width,
            "height": self.height,
            "model": {"name": self.model.name, "version": self.model.version},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Prediction:
        """Read the service's JSON; keys added by a newer service are ignored. ``KeyError``/``TypeError`` if malformed."""
        box, model = data["box"], data["model"]
        return cls(
            label=str(data["label"]),
            score=float(data["score"]),
            box=Box(float(box["x"]), float(box["y"]), float(box["w"]), float(box["h"])),
            width=int(data["width"]),
            height=int(data["height"]),
            model=ModelRef(str(model["name"]), str(model["version"])),
        )
