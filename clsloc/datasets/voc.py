"""Pascal VOC XML: one ``<annotation>`` file per image.

Layout: a folder of ``*.xml`` (any name: ``Annotations/``, ``annotations/``,
``annots/``, or the dataset folder itself) and the images in a sibling folder
(``JPEGImages/``, ``images/``, ...) or next to the XML files. ``<filename>`` and
``<path>`` usually point at the annotator's machine, so the image is matched
by file name (then by stem) in the dataset's own folders.

Coordinates: VOC boxes are 1-based inclusive pixel indices (``xmin=1`` is the
first column, ``xmax=width`` the last). They become 0-based continuous xyxy as
``(xmin - 1, ymin - 1, xmax, ymax)``, the convention of the VOC devkit and of
torchvision's detection references, so a box covering the whole image is
exactly ``(0, 0, width, height)``.

``<size>`` with 0 or missing width/height: the real size is read from the image.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from clsloc.datasets.files import ImageIndex
from clsloc.datasets.records import Problem, RawAnnotation

PREFERRED_IMAGE_FOLDERS = ("JPEGImages", "images", "Images", "imgs", "img")


def xml_folders(root: Path) -> list[Path]:
    """The folders holding VOC XML files: the root itself and/or its direct subfolders."""
    folders = [root] if any(root.glob("*.xml")) else []
    folders += [d for d in sorted(root.iterdir()) if d.is_dir() and any(d.glob("*.xml"))]
    return folders


def looks_like_voc(root: Path) -> bool:
    return root.is_dir() and bool(xml_folders(root))


def image_index(root: Path, annotation_folders: list[Path]) -> ImageIndex:
    index = ImageIndex()
    subfolders = [d for d in sorted(root.iterdir()) if d.is_dir() and d not in annotation_folders]
    subfolders.sort(key=lambda d: (d.name not in PREFERRED_IMAGE_FOLDERS, d.name))
    for folder in subfolders:
        index.add(folder, recursive=True)
    for folder in [root, *annotation_folders]:
        index.add(folder)
    return index


def _number(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        return None


def parse_voc_xml(xml_path: Path, index: ImageIndex) -> RawAnnotation | Problem:
    """One VOC file -> RawAnnotation, or a Problem when the file is unusable."""
    name = str(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        return Problem(name, "bad_annotation", f"not valid XML ({exc})")
    except OSError as exc:
        return Problem(name, "bad_annotation", f"cannot read ({exc.strerror or exc})")
    if root.tag != "annotation":
        return Problem(name, "bad_annotation", f"root element is <{root.tag}>, expected <annotation>")

    filename = (root.findtext("filename") or "").strip()
    path_text = (root.findtext("path") or "").strip()
    raw = RawAnnotation(annotation=name, image=None, image_name=filename or path_text or xml_path.stem)
    raw.image = index.find(filename, path_text, xml_path.stem)
    if raw.image is None and not (filename or path_text):
        raw.problems.append(
            Problem(name, "missing_field", "no <filename> or <path>; looked for an image named like the XML file")
        )

    width, height = _number(root.findtext("size/width")), _number(root.findtext("size/height"))
    raw.width = int(width) if width and width > 0 else None
    raw.height = int(height) if height and height > 0 else None

    for i, obj in enumerate(root.findall("object"), start=1):
        label = (obj.findtext("name") or "").strip()
        if not label:
            raw.problems.append(Problem(name, "missing_field", f"object {i} has no <name>; dropped", skipped=False))
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raw.problems.append(
                Problem(name, "missing_field", f"object {i} ({label}) has no <bndbox>; dropped", skipped=False)
            )
            continue
        coords = {key: _number(bndbox.findtext(key)) for key in ("xmin", "ymin", "xmax", "ymax")}
        bad = [key for key, value in coords.items() if value is None]
        if bad:
            values = ", ".join(f"{k}={bndbox.findtext(k)!r}" for k in bad)
            raw.problems.append(
                Problem(
                    name, "bad_box", f"object {i} ({label}): missing or non-numeric {values}; dropped", skipped=False
                )
            )
            continue
        raw.objects.append((label, (coords["xmin"] - 1, coords["ymin"] - 1, coords["xmax"], coords["ymax"])))
    return raw


def read_voc(root: Path) -> list[RawAnnotation | Problem]:
    folders = xml_folders(root)
    index = image_index(root, folders)
    return [parse_voc_xml(xml, index) for folder in folders for xml in sorted(folder.glob("*.xml"))]
