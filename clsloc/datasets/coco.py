"""COCO JSON: one file with ``images``, ``annotations`` and ``categories``.

Boxes are ``bbox: [x, y, w, h]``: top-left corner and size in 0-based
continuous pixels, so xyxy is ``(x, y, x + w, y + h)``. Images are looked up by
``file_name`` relative to the JSON file, then by name in the folders next to
it (``images/``, ``train/``, ...), recursively.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from clsloc.datasets.files import ImageIndex
from clsloc.datasets.records import DatasetError, Problem, RawAnnotation


def _image_index(json_path: Path) -> ImageIndex:
    folder = json_path.parent
    index = ImageIndex()
    subfolders = sorted((d for d in folder.iterdir() if d.is_dir()), key=lambda d: (d.name != "images", d.name))
    index.add(folder)
    for sub in subfolders:
        index.add(sub, recursive=True)
    index.add(folder.parent / "images", recursive=True)
    return index


def _require_list(data: dict, key: str, source: Path) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        found = "missing" if key not in data else f"a {type(value).__name__}"
        raise DatasetError(f"{source}: COCO field {key!r} must be a list, it is {found}")
    return value


def read_coco(json_path: Path) -> list[RawAnnotation | Problem]:
    source = str(json_path)
    try:
        data = json.loads(Path(json_path).read_text())
    except OSError as exc:
        raise DatasetError(f"{json_path}: cannot read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{json_path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{json_path}: a COCO file is a JSON object, this is a {type(data).__name__}")
    images = _require_list(data, "images", json_path)
    annotations = _require_list(data, "annotations", json_path)
    categories = _require_list(data, "categories", json_path)

    problems: list[Problem] = []
    names: dict = {}
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or "id" not in cat or not str(cat.get("name", "")).strip():
            problems.append(
                Problem(source, "bad_annotation", f"categories[{i}] needs an 'id' and a 'name': {cat!r}", skipped=False)
            )
            continue
        names[cat["id"]] = str(cat["name"]).strip()

    boxes: dict = defaultdict(list)
    image_ids = {img.get("id") for img in images if isinstance(img, dict)}
    for i, ann in enumerate(annotations):
        where = f"{source} (annotations[{i}])"
        if not isinstance(ann, dict):
            problems.append(Problem(where, "bad_annotation", f"not an object: {ann!r}", skipped=False))
            continue
        image_id, category_id, bbox = ann.get("image_id"), ann.get("category_id"), ann.get("bbox")
        if image_id not in image_ids:
            problems.append(
                Problem(where, "bad_annotation", f"image_id {image_id!r} is not in 'images'", skipped=False)
            )
            continue
        if category_id not in names:
            problems.append(
                Problem(
                    where,
                    "unknown_class",
                    f"category_id {category_id!r} is not in 'categories'; box dropped",
                    skipped=False,
                )
            )
            continue
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            problems.append(
                Problem(where, "bad_box", f"bbox must be [x, y, w, h] numbers, got {bbox!r}; dropped", skipped=False)
            )
            continue
        boxes[image_id].append((names[category_id], (x, y, x + w, y + h)))

    index = _image_index(Path(json_path))
    out: list[RawAnnotation | Problem] = list(problems)
    for i, img in enumerate(images):
        if not isinstance(img, dict) or not str(img.get("file_name", "")).strip():
            out.append(Problem(f"{source} (images[{i}])", "bad_annotation", f"an image needs a 'file_name': {img!r}"))
            continue
        file_name = str(img["file_name"]).strip()
        direct = Path(json_path).parent / file_name
        image = direct if direct.is_file() else index.find(file_name)
        width, height = img.get("width"), img.get("height")
        raw = RawAnnotation(
            annotation=source,
            image=image,
            image_name=file_name,
            width=int(width) if isinstance(width, (int, float)) and width > 0 else None,
            height=int(height) if isinstance(height, (int, float)) and height > 0 else None,
            objects=boxes.get(img.get("id"), []),
        )
        out.append(raw)
    return out
