"""Sample images shipped beside an exported model, so a first look needs no photo of one's own.

Export picks a few validation images per class, in the order of the
validation split (deterministic), decodes them with the one decoding
function (EXIF applied), shrinks them, and writes them as JPEG into
``MODEL_DIR/samples/``; the manifest lists them. The web page offers them as
one-click examples of what the model knows.
"""

from __future__ import annotations

import re
from pathlib import Path

from clsloc.images import ImageError, open_image
from clsloc.manifest import SAMPLES_DIR

MAX_SIDE = 512  # big enough to see the box, small enough to keep the model directory light


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "class"


def write_samples(records, model_dir: str | Path, *, per_class: int = 2) -> list[dict]:
    """Up to ``per_class`` images of each class among ``records`` -> MODEL_DIR/samples/; the manifest's list.

    An image that no longer decodes is skipped (a sample is a convenience, never a reason to fail).
    """
    out = Path(model_dir) / SAMPLES_DIR
    samples: list[dict] = []
    taken: dict[str, int] = {}
    for record in records:
        count = taken.get(record.label, 0)
        if count >= per_class:
            continue
        try:
            image = open_image(record.image)
        except ImageError:
            continue
        image.thumbnail((MAX_SIDE, MAX_SIDE))
        out.mkdir(parents=True, exist_ok=True)
        file = f"{SAMPLES_DIR}/{_safe(record.label)}-{count + 1}.jpg"
        image.save(Path(model_dir) / file, format="JPEG", quality=90)
        samples.append({"file": file, "label": record.label})
        taken[record.label] = count + 1
    return samples
