"""What to score: INPUT arguments -> image paths, with ground truth where a labelled dataset gives it.

Each INPUT is one of:

* an **image file** (by extension, any case): that image;
* a **folder**: a labelled dataset when ``clsloc.datasets`` recognizes one
  (VOC / COCO / YOLO / CSV, see :func:`clsloc.datasets.detect_format`), else
  every image file under it, recursively (extensions of
  ``clsloc.datasets.files.IMAGE_EXTENSIONS``, any case), in sorted order;
* a **dataset file** (``.json`` COCO, ``.csv`` table, YOLO ``data.yaml``);
* a **glob** (``photos/**/*.jpg``; ``**`` recurses): every file it matches,
  sorted; a folder it matches is read as a folder of images;
* any other **text file**: a list of paths, one per line (blank lines and
  lines starting with ``#`` skipped; relative paths are relative to the
  list's folder). A listed path that is missing or not an image still gets
  its row, with the reason. A binary file (say ``photo.heic``) is an image
  input, whatever its extension: its row says what the decoder made of it.

A labelled dataset contributes all its images, with their ground truth:
also those training leaves out (an unreadable image is scored, and gets an
error row), and annotated images with no usable box (scored without ground
truth). With ``images_only`` every folder is a folder of images.

Paths are made absolute (symbolic links are kept as named) and each is
scored once: a path named twice keeps its first ground truth.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clsloc.datasets import DatasetError, Problem, Record, detect_format, load_dataset
from clsloc.datasets.files import IMAGE_EXTENSIONS

DATASET_SUFFIXES = (".json", ".csv", ".yaml", ".yml")
_GLOB_CHARS = set("*?[")


class InputError(ValueError):
    """An INPUT argument that names nothing to score (the message says which and why)."""


@dataclass
class Inputs:
    paths: list[str] = field(default_factory=list)  # absolute, unique, in the order found
    truth: dict[str, Record] = field(default_factory=dict)  # path -> ground truth (labelled datasets only)
    datasets: list[str] = field(default_factory=list)  # "format:path" of each labelled dataset read
    problems: list[Problem] = field(default_factory=list)  # what the dataset readers reported
    duplicates: int = 0  # paths named more than once (scored once)

    def add(self, path: str | os.PathLike, record: Record | None = None) -> None:
        key = absolute(path)
        if key in self._seen:
            self.duplicates += 1
            return
        self._seen.add(key)
        self.paths.append(key)
        if record is not None:
            self.truth[key] = record

    def __post_init__(self) -> None:
        self._seen = set(self.paths)


def absolute(path: str | os.PathLike) -> str:
    """The key of an input: an absolute, normalized path (``..`` folded, links not followed)."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def is_image_name(path: str | os.PathLike) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def walk_images(folder: str | os.PathLike) -> Iterator[str]:
    """Image files under ``folder``, recursively, sorted (symbolic links to folders are not followed)."""
    for root, dirs, files in os.walk(folder, onerror=None):
        dirs.sort()
        for name in sorted(files):
            if is_image_name(name):
                yield os.path.join(root, name)


def _is_binary(path: Path) -> bool:
    """A file that cannot be a list of paths (a NUL byte near its start): e.g. a HEIC photo."""
    try:
        with open(path, "rb") as f:
            return b"\x00" in f.read(8192)
    except OSError:
        return False


def read_list(list_file: Path) -> Iterator[str]:
    """Paths listed in a text file, one per line; relative ones are relative to the file's folder."""
    try:
        text = list_file.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise InputError(f"{list_file}: cannot read ({exc.strerror or exc})") from None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line if os.path.isabs(line) else os.path.join(list_file.parent, line)


def add_dataset(inputs: Inputs, path: str, *, policy: str = "largest", progress: bool = False) -> None:
    """Add a labelled dataset's images with their ground truth; InputError when it cannot be read."""
    try:
        dataset = load_dataset([path], policy=policy, check_images=True, progress=progress)
    except DatasetError as exc:
        raise InputError(str(exc)) from None
    inputs.datasets.extend(dataset.sources)
    inputs.problems.extend(dataset.problems)
    for record in [*dataset.records, *dataset.skipped]:
        inputs.add(record.image, record)
    for problem in dataset.problems:  # annotated images with no usable box: scored, without ground truth
        if problem.kind == "empty_annotation" and os.path.isfile(problem.file):
            inputs.add(problem.file)


def _add_labelled(inputs: Inputs, path: str, policy: str, progress: bool) -> None:
    try:
        add_dataset(inputs, path, policy=policy, progress=progress)
    except InputError as exc:
        raise InputError(f"{exc} (to score a folder's images without its annotations, add --images-only)") from None


def _is_dataset(path: Path) -> bool:
    try:
        detect_format(path)
    except DatasetError:
        return False
    return True


def add_input(inputs: Inputs, arg: str, *, images_only: bool = False, policy: str = "largest", progress=False) -> None:
    """Add what one INPUT argument names (see the module docstring); InputError when it names nothing."""
    path = Path(os.path.expanduser(arg))
    if not os.path.lexists(path):
        if not _GLOB_CHARS & set(arg):
            raise InputError(f"{arg}: no such file or folder (and not a glob pattern)")
        matches = sorted(glob.iglob(os.path.expanduser(arg), recursive=True))
        if not matches:
            raise InputError(f"{arg}: the glob pattern matches nothing")
        for match in matches:
            if os.path.isdir(match):
                for image in walk_images(match):
                    inputs.add(image)
            else:
                inputs.add(match)
        return
    if path.is_dir():
        if not images_only and _is_dataset(path):
            _add_labelled(inputs, arg, policy, progress)
        else:
            for image in walk_images(path):
                inputs.add(image)
        return
    if is_image_name(path) or _is_binary(path):  # a binary file named on its own: the decoder says what it is
        inputs.add(path)
    elif not images_only and path.suffix.lower() in DATASET_SUFFIXES:
        _add_labelled(inputs, arg, policy, progress)
    else:
        for listed in read_list(path):
            inputs.add(listed)


def collect(
    args: Sequence[str], *, images_only: bool = False, policy: str = "largest", progress: bool = False
) -> Inputs:
    """All INPUT arguments -> one :class:`Inputs`; InputError for the first argument that names nothing."""
    inputs = Inputs()
    for arg in args:
        add_input(inputs, arg, images_only=images_only, policy=policy, progress=progress)
    if not inputs.paths:
        raise InputError(f"no images in {', '.join(args)} (image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return inputs


def from_records(records: Sequence[Record]) -> Inputs:
    """Inputs for given ground-truth records, in their order (``clsloc evaluate --val-of``)."""
    inputs = Inputs()
    for record in records:
        inputs.add(record.image, record)
    return inputs
