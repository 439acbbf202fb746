"""Format detection and ``load_dataset``: several datasets in, one Dataset out.

Detection looks only at the path (cheap, predictable):

==========================================================  ======
path                                                        format
==========================================================  ======
``*.json`` file, or a folder with exactly one ``*.json``      COCO
``*.csv`` file, or a folder with exactly one ``*.csv``        CSV
``data.yaml`` file, or a folder with ``data.yaml`` /
``classes.txt`` and label ``*.txt`` files                     YOLO
a folder with ``*.xml`` (in it or in a direct subfolder)      VOC
==========================================================  ======
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from clsloc.datasets import coco, csv_table, voc, yolo
from clsloc.datasets.records import POLICIES, Dataset, DatasetError, Problem, RawAnnotation, finalize

FORMATS = ("voc", "coco", "yolo", "csv")


def _single(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern))
    return found[0] if len(found) == 1 else None


def detect_format(path: str | Path) -> tuple[str, Path]:
    """``(format, path to read)`` for a dataset path; DatasetError when it cannot tell."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return "coco", path
        if suffix == ".csv":
            return "csv", path
        if suffix in (".yaml", ".yml"):
            return "yolo", path
        raise DatasetError(
            f"{path}: cannot tell the dataset format from a {suffix or 'suffix-less'} file "
            "(expected a COCO .json, a .csv, a YOLO data.yaml, or a folder)"
        )
    if yolo.looks_like_yolo(path):
        return "yolo", path
    if voc.looks_like_voc(path):
        return "voc", path
    for pattern, fmt in (("*.json", "coco"), ("*.csv", "csv")):
        single = _single(path, pattern)
        if single is not None:
            return fmt, single
    raise DatasetError(
        f"{path}: cannot tell the dataset format: expected Pascal VOC *.xml files (in the folder or a subfolder), "
        "one COCO *.json, one *.csv (filename,width,height,class,xmin,ymin,xmax,ymax), "
        "or a YOLO folder with data.yaml or classes.txt and labels/*.txt"
    )


READERS = {"voc": voc.read_voc, "coco": coco.read_coco, "yolo": yolo.read_yolo, "csv": csv_table.read_csv}


def read_raw(path: str | Path) -> tuple[str, list[RawAnnotation | Problem]]:
    try:
        fmt, target = detect_format(path)
        return fmt, READERS[fmt](target)
    except OSError as exc:  # e.g. a folder we may not list: name it, no traceback
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc}: {exc.filename or path})") from None


def load_dataset(
    paths: str | Path | Iterable[str | Path],
    *,
    policy: str = "largest",
    check_images: bool = True,
    errors: str = "raise",
    progress: bool = False,
) -> Dataset:
    """Read and merge datasets; records with problems are left out and listed in ``problems``.

    ``check_images`` decodes every image once (cheaply) so truncated or corrupt
    files are found now rather than in the middle of training; without it only
    missing files are found and sizes come from the annotations (or headers).

    ``errors="report"`` turns a dataset path that cannot be read at all into
    a problem (kind ``unreadable_dataset``) instead of a DatasetError, so the
    other paths are still read (``data check`` uses it). ``progress`` shows a
    bar per dataset on stderr when it is a terminal.
    """
    if errors not in ("raise", "report"):
        raise ValueError(f"errors must be 'raise' or 'report', got {errors!r}")
    if policy not in POLICIES:
        raise ValueError(f"unknown target policy {policy!r} (known: {', '.join(POLICIES)})")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise DatasetError("no dataset path given")
    dataset = Dataset(records=[], classes=[], problems=[], sources=[])
    for path in paths:
        try:
            fmt, items = read_raw(path)
        except DatasetError as exc:
            if errors == "raise":
                raise
            dataset.problems.append(Problem(str(path), "unreadable_dataset", str(exc)))
            continue
        dataset.sources.append(f"{fmt}:{path}")
        if progress:
            from clsloc.progress import progress_bar

            items = progress_bar(items, desc=f"reading {path}", unit="img", leave=False)
        for item in items:
            if isinstance(item, Problem):
                dataset.problems.append(item)
                continue
            result = finalize(item, policy=policy, check_images=check_images)
            dataset.problems.extend(result.problems)
            if result.record is not None:
                dataset.records.append(result.record)
            if result.skipped is not None:
                dataset.skipped.append(result.skipped)
    dataset.classes = sorted({r.label for r in dataset.records})
    return dataset
