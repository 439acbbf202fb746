"""What a dataset is once read: records, problems, and the rules that make them.

Every reader (VOC, COCO, YOLO, CSV) only parses its format into
:class:`RawAnnotation` objects; the rules every format shares live here, once:

* **Boxes** are pixel xyxy in continuous coordinates of the image as
  displayed: ``(0, 0)`` is the top-left corner of the top-left pixel and
  ``(width, height)`` the bottom-right corner of the last one.
* A box **outside the image** is clipped to it. If it reached out further than
  a small tolerance (2 px or 1 % of the side, whichever is larger — annotation
  tools round), that is reported as a problem (``box_outside_image``) but the
  clipped box is kept. A box with nothing left inside the image is dropped.
* A **zero-area or inverted** box (``x1 <= x0`` or ``y1 <= y0``) is dropped
  and reported (``bad_box``); it is never silently swapped.
* An image with **no usable box** is reported (``empty_annotation``) and left
  out.
* Problem kinds: ``missing_image``; the image's own error kinds from
  :mod:`clsloc.images` (``truncated``, ``not_an_image``, ``unsupported_format``,
  ``too_many_pixels``, ...); ``bad_exif`` (warning); ``bad_annotation`` (file
  unparsable); ``missing_field``; ``bad_box``; ``box_outside_image``;
  ``unknown_class``; ``empty_annotation``; ``multi_object`` (policy ``skip``);
  ``size_mismatch`` (warning); ``unreadable_dataset`` (a whole path).
* The **training target** of a multi-object image comes from the policy:
  ``largest`` (default: the biggest box, the "main object"; ties -> the first),
  ``first`` (annotation order), ``skip`` (multi-object images are left out
  and reported as ``multi_object``). The record always keeps all objects, and
  evaluation uses them all (ILSVRC rule: the best-matching box counts).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clsloc.boxes import normalize_boxes
from clsloc.images import ImageError, ImageWarning, check_image, image_size

POLICIES = ("largest", "first", "skip")


class DatasetError(ValueError):
    """A dataset path that cannot be read at all (not found, format unknown, unreadable index file)."""


@dataclass(frozen=True)
class GroundTruth:
    label: str
    box: tuple[float, float, float, float]  # pixel xyxy in the displayed image


@dataclass
class Record:
    image: Path
    width: int
    height: int
    objects: list[GroundTruth]
    annotation: str  # the file the annotation came from
    label: str  # the single training target, chosen by the policy
    box: tuple[float, float, float, float]  # its pixel xyxy box

    @property
    def box_normalized(self) -> np.ndarray:
        """The target box as normalized xyxy (4,), the network's convention."""
        return normalize_boxes(np.asarray(self.box, dtype=np.float64), self.width, self.height)

    @property
    def label_boxes_normalized(self) -> np.ndarray:
        """(M, 4) normalized xyxy: every box of the target's class, the policy's box first. These are
        the boxes a prediction of the right class is scored against (``clsloc.metrics``: the best
        match counts), so training may take its box loss against the nearest of them."""
        others = [o.box for o in self.objects if o.label == self.label and tuple(o.box) != tuple(self.box)]
        boxes = np.asarray([self.box, *others], dtype=np.float64)
        return normalize_boxes(boxes, self.width, self.height)


@dataclass
class Problem:
    file: str
    kind: str
    detail: str
    # True when the image was left out of training because of this problem;
    # False for warnings about a record that was kept (a clipped or dropped box).
    skipped: bool = True

    def to_dict(self) -> dict:
        return {"file": self.file, "kind": self.kind, "detail": self.detail, "skipped": self.skipped}


@dataclass
class Dataset:
    records: list[Record]
    classes: list[str]  # sorted names of the training targets in ``records``
    problems: list[Problem]
    sources: list[str]
    # Annotated images found but left out: unreadable image, or a multi-object
    # image under policy "skip". ``data check`` counts them as images.
    skipped: list[Record] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class RawAnnotation:
    """One image's annotation as a reader parsed it, before the shared rules run.

    ``objects`` are ``(label, box)``; boxes are pixel xyxy (continuous) unless
    ``normalized`` (YOLO), in which case they are normalized xyxy and scaled
    once the real image size is known.
    """

    annotation: str
    image: Path | None  # None: no image file found for it
    image_name: str  # what the annotation calls the image, for messages
    width: int | None = None  # as declared by the annotation (None/0: unknown)
    height: int | None = None
    objects: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)
    normalized: bool = False
    problems: list[Problem] = field(default_factory=list)  # object-level problems the reader found


def outside_tolerance(side: float) -> float:
    return max(2.0, 0.01 * side)


def clean_box(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[tuple[float, float, float, float] | None, str | None, str | None]:
    """Apply the box rules: -> (clipped box or None if dropped, problem kind, detail)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None, "bad_box", f"box {box} has a non-finite coordinate; dropped"
    if x1 <= x0 or y1 <= y0:
        return None, "bad_box", f"box xyxy=({x0:g}, {y0:g}, {x1:g}, {y1:g}) has zero area or is inverted; dropped"
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if cx1 <= cx0 or cy1 <= cy0:
        return (
            None,
            "box_outside_image",
            (f"box xyxy=({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {width}x{height} image; dropped"),
        )
    overshoot_x = max(-x0, x1 - width, 0.0)
    overshoot_y = max(-y0, y1 - height, 0.0)
    if overshoot_x > outside_tolerance(width) or overshoot_y > outside_tolerance(height):
        return (
            (cx0, cy0, cx1, cy1),
            "box_outside_image",
            (f"box xyxy=({x0:g}, {y0:g}, {x1:g}, {y1:g}) reaches outside the {width}x{height} image; clipped"),
        )
    return (cx0, cy0, cx1, cy1), None, None


def choose_target(objects: list[GroundTruth], policy: str) -> GroundTruth | None:
    """The training target of an image by ``policy``; None when the policy leaves it out."""
    if policy not in POLICIES:
        raise ValueError(f"unknown target policy {policy!r} (known: {', '.join(POLICIES)})")
    if not objects:
        return None
    if policy == "first" or len(objects) == 1:
        return objects[0]
    if policy == "skip":
        return None
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in (o.box for o in objects)]
    return objects[int(np.argmax(areas))]  # argmax: the first of equal areas


@dataclass
class Finalized:
    record: Record | None = None  # usable for training
    skipped: Record | None = None  # annotated and found, but left out
    problems: list[Problem] = field(default_factory=list)


def finalize(raw: RawAnnotation, *, policy: str = "largest", check_images: bool = True) -> Finalized:
    """Apply the shared rules to one parsed annotation."""
    out = Finalized(problems=list(raw.problems))
    if raw.image is None or not raw.image.is_file():
        where = raw.image if raw.image is not None else raw.image_name
        out.problems.append(
            Problem(str(where), "missing_image", f"image {raw.image_name!r} of {raw.annotation} not found")
        )
        return out
    image_file = str(raw.image)
    declared = (raw.width or 0, raw.height or 0)
    unreadable: ImageError | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImageWarning)
        try:
            size = (
                check_image(raw.image) if check_images else (declared if min(declared) > 0 else image_size(raw.image))
            )
        except ImageError as exc:
            unreadable, size = exc, declared
    for warning in caught:  # odd but decodable images (bogus EXIF) become listed warnings
        if isinstance(warning.message, ImageWarning):
            out.problems.append(Problem(image_file, warning.message.kind, warning.message.detail, skipped=False))
        else:
            warnings.warn(warning.message, stacklevel=2)
    width, height = int(size[0]), int(size[1])
    if unreadable is None and min(declared) > 0 and declared != (width, height):
        rotated = (
            " (swapped: EXIF rotation? the boxes may have been drawn on the unrotated image)"
            if declared == (height, width)
            else ""
        )
        out.problems.append(
            Problem(
                image_file,
                "size_mismatch",
                f"annotation {raw.annotation} says {declared[0]}x{declared[1]}, the image as displayed is {width}x{height}"
                f"{rotated}; boxes are taken as given and clipped to the image",
                skipped=False,
            )
        )

    objects: list[GroundTruth] = []
    for label, box in raw.objects:
        if raw.normalized:
            box = tuple(float(v) * s for v, s in zip(box, (width, height, width, height)))
        if width <= 0 or height <= 0:  # unreadable image and no declared size: keep boxes as given
            objects.append(GroundTruth(label, tuple(float(v) for v in box)))
            continue
        cleaned, kind, detail = clean_box(box, width, height)
        if kind is not None:
            out.problems.append(Problem(image_file, kind, f"{label}: {detail} ({raw.annotation})", skipped=False))
        if cleaned is not None:
            objects.append(GroundTruth(label, cleaned))

    if not objects:
        out.problems.append(Problem(image_file, "empty_annotation", f"no usable box in {raw.annotation}"))
        return out
    target = choose_target(objects, policy)
    record = Record(
        image=raw.image,
        width=width,
        height=height,
        objects=objects,
        annotation=raw.annotation,
        label=(target or objects[0]).label,
        box=(target or objects[0]).box,
    )
    if unreadable is not None:
        out.problems.append(Problem(image_file, unreadable.kind, unreadable.detail))
        out.skipped = record
    elif target is None:
        out.problems.append(
            Problem(
                image_file, "multi_object", f"{len(objects)} objects and policy 'skip' leaves multi-object images out"
            )
        )
        out.skipped = record
    else:
        out.record = record
    return out
