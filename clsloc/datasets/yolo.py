"""YOLO txt: one ``labels/*.txt`` per image, one ``class cx cy w h`` line per box.

Values are normalized to the image size (``cx cy`` the centre, ``w h`` the
size), so the real image size is read from each image. Class names come from
``data.yaml`` (``names:`` as a list or an ``{id: name}`` mapping) or from
``classes.txt`` / ``obj.names`` (one name per line, line number = id).

Label files live in ``labels/`` (any depth) or ``SPLIT/labels/`` (Roboflow's
export), or beside the images. Images are found the Ultralytics way: the label
path with ``labels`` replaced by ``images`` and an image extension; else next to the label file; else by
stem anywhere in the dataset folder. A line with more than 5 values is a
segmentation polygon (``class x1 y1 x2 y2 ...``): its bounding box is used.
Images without a label file are background images: reported, left out.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from clsloc.datasets.files import IMAGE_EXTENSIONS, ImageIndex
from clsloc.datasets.records import DatasetError, Problem, RawAnnotation

YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml")
TEXT_NAMES = ("classes.txt", "obj.names", "classes.names")


def _names_file(root: Path) -> Path | None:
    for name in (*YAML_NAMES, *TEXT_NAMES):
        if (root / name).is_file():
            return root / name
    return None


def _label_folders(root: Path) -> list[Path]:
    """Every folder named ``labels`` (``labels/``, ``labels/train/``, Roboflow's ``train/labels/``)."""
    folders = [root / "labels"] if (root / "labels").is_dir() else []
    folders += [d for d in sorted(root.glob("*/labels")) if d.is_dir()]
    return folders


def looks_like_yolo(root: Path) -> bool:
    if not root.is_dir() or _names_file(root) is None:
        return False
    return bool(_label_folders(root)) or any(p.name not in TEXT_NAMES for p in root.glob("*.txt"))


def read_class_names(path: Path) -> list[str]:
    """Class names by id from data.yaml or classes.txt; DatasetError naming the file otherwise."""
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: not a readable YAML file ({exc})") from None
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            try:
                ids = sorted(int(k) for k in names)
            except (TypeError, ValueError):
                raise DatasetError(f"{path}: 'names' keys must be class ids (integers), got {list(names)!r}") from None
            if ids != list(range(len(ids))):
                raise DatasetError(f"{path}: 'names' ids must be 0..{len(ids) - 1}, got {ids}")
            names = [names[k] if k in names else names[str(k)] for k in ids]
        if not isinstance(names, list) or not names:
            raise DatasetError(f"{path}: field 'names' must be a non-empty list or {{id: name}} mapping, got {names!r}")
        return [str(n).strip() for n in names]
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    if not names:
        raise DatasetError(f"{path}: no class names in it")
    return names


def _mirror_image(label: Path, root: Path) -> Path | None:
    """labels/train/x.txt -> images/train/x.<ext> (Ultralytics layout)."""
    try:
        parts = list(label.relative_to(root).parts)
    except ValueError:
        return None
    if "labels" not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index("labels")
    parts[i] = "images"
    stem = root.joinpath(*parts).with_suffix("")
    for ext in IMAGE_EXTENSIONS:
        for candidate in (stem.with_suffix(ext), stem.with_suffix(ext.upper())):
            if candidate.is_file():
                return candidate
    return None


def _parse_line(text: str, names: list[str]) -> tuple[str, tuple[float, ...]] | str:
    """One label line -> (class name, normalized xyxy), or a string saying what is wrong."""
    fields = text.split()
    if len(fields) < 5 or (len(fields) > 5 and len(fields) % 2 == 0):
        return f"expected 'class cx cy w h' (or a polygon), got {text.strip()!r}"
    try:
        class_value = float(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError:
        return f"non-numeric value in {text.strip()!r}"
    if not class_value.is_integer() or not 0 <= class_value < len(names):
        return f"unknown class id {fields[0]} (known ids: 0..{len(names) - 1})"
    if len(values) == 4:
        cx, cy, w, h = values
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    else:
        xs, ys = values[0::2], values[1::2]
        box = (min(xs), min(ys), max(xs), max(ys))
    return names[int(class_value)], box


def read_yolo(path: Path) -> list[RawAnnotation | Problem]:
    path = Path(path)
    root = path.parent if path.is_file() else path
    names_file = path if path.is_file() else _names_file(root)
    if names_file is None:
        raise DatasetError(f"{root}: a YOLO dataset needs data.yaml or classes.txt with the class names")
    names = read_class_names(names_file)

    index = ImageIndex([root], recursive=True)
    label_folders = _label_folders(root)
    if label_folders:
        label_files = sorted(p for folder in label_folders for p in folder.rglob("*.txt") if p.name not in TEXT_NAMES)
    else:  # flat layout: a .txt is a label file only beside an image of the same stem (not train.txt, README.txt)
        label_files = sorted(p for p in root.rglob("*.txt") if p.name not in TEXT_NAMES and index.find(p.stem))

    out: list[RawAnnotation | Problem] = []
    used: set[Path] = set()
    for label_file in label_files:
        image = _mirror_image(label_file, root) or index.find(label_file.stem)
        if image is not None:
            used.add(image)
        raw = RawAnnotation(annotation=str(label_file), image=image, image_name=label_file.stem, normalized=True)
        try:
            lines = label_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            out.append(Problem(str(label_file), "bad_annotation", f"cannot read ({exc})"))
            continue
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            parsed = _parse_line(text, names)
            if isinstance(parsed, str):
                kind = "unknown_class" if parsed.startswith("unknown class") else "bad_box"
                raw.problems.append(Problem(f"{label_file}:{number}", kind, f"{parsed}; box dropped", skipped=False))
            else:
                raw.objects.append(parsed)
        out.append(raw)
    for image in index.paths():
        if image not in used:
            out.append(Problem(str(image), "empty_annotation", "no label file (a background image); left out"))
    return out
