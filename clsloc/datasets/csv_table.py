"""CSV: one row per box, ``filename,width,height,class,xmin,ymin,xmax,ymax``.

The layout of the common ``xml_to_csv`` script (and of Roboflow's CSV export).
Several rows with the same ``filename`` are one image with several objects.
Column names are case-insensitive; ``label``/``name`` are accepted for
``class``; ``width``/``height`` may be absent or 0 (read from the image).
Boxes are taken as written: 0-based continuous pixel xyxy, the way the
TensorFlow tooling that consumes this layout reads them.
"""

from __future__ import annotations

import csv
from pathlib import Path

from clsloc.datasets.files import ImageIndex
from clsloc.datasets.records import DatasetError, Problem, RawAnnotation

REQUIRED = ("filename", "class", "xmin", "ymin", "xmax", "ymax")
ALIASES = {"label": "class", "name": "class", "category": "class", "image": "filename", "file": "filename"}


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _image_index(csv_path: Path) -> ImageIndex:
    folder = csv_path.parent
    index = ImageIndex()
    index.add(folder)
    for sub in sorted((d for d in folder.iterdir() if d.is_dir()), key=lambda d: (d.name != "images", d.name)):
        index.add(sub, recursive=True)
    return index


def read_csv(csv_path: Path) -> list[RawAnnotation | Problem]:
    source = str(csv_path)
    try:
        handle = open(csv_path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise DatasetError(f"{csv_path}: cannot read ({exc.strerror or exc})") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError(f"{csv_path}: empty CSV file (expected a header {','.join(REQUIRED)})") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"{csv_path}: not a readable CSV file ({exc})") from None
        columns = [ALIASES.get(c.strip().lower(), c.strip().lower()) for c in header]
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise DatasetError(
                f"{csv_path}: missing column(s) {', '.join(missing)} "
                f"(header is {','.join(header)!r}; expected filename,width,height,class,xmin,ymin,xmax,ymax)"
            )
        position = {c: columns.index(c) for c in set(columns)}
        images: dict[str, RawAnnotation] = {}
        problems: list[Problem] = []
        index = _image_index(Path(csv_path))
        try:
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                where = f"{source}:{line}"

                def get(col: str, row: list[str] = row) -> str:
                    return row[position[col]].strip() if col in position and position[col] < len(row) else ""

                filename = get("filename")
                if not filename:
                    problems.append(Problem(where, "missing_field", "row has no filename; skipped"))
                    continue
                raw = images.get(filename)
                if raw is None:
                    direct = Path(csv_path).parent / filename
                    width, height = _number(get("width")), _number(get("height"))
                    raw = images[filename] = RawAnnotation(
                        annotation=source,
                        image=direct if direct.is_file() else index.find(filename),
                        image_name=filename,
                        width=int(width) if width and width > 0 else None,
                        height=int(height) if height and height > 0 else None,
                    )
                label = get("class")
                if not label:
                    raw.problems.append(
                        Problem(where, "missing_field", f"row for {filename} has no class; box dropped", skipped=False)
                    )
                    continue
                coords = [_number(get(c)) for c in ("xmin", "ymin", "xmax", "ymax")]
                if any(v is None for v in coords):
                    values = ", ".join(f"{c}={get(c)!r}" for c in ("xmin", "ymin", "xmax", "ymax"))
                    raw.problems.append(
                        Problem(
                            where, "bad_box", f"{filename}: missing or non-numeric {values}; box dropped", skipped=False
                        )
                    )
                    continue
                raw.objects.append((label, tuple(coords)))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"{csv_path}: not a readable CSV file ({exc})") from None
    return [*problems, *images.values()]
