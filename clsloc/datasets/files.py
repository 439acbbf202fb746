"""Finding a dataset's image files by name.

Annotations name their image by a path on the annotator's machine
(``/Users/someone/Desktop/raccoon/images/raccoon-1.jpg``, ``C:\\data\\x.jpg``) or by
a bare name. Only the file name is trusted: it is looked up in the dataset's
own image folder(s), first by exact name, then by stem (``raccoon-1`` or a
wrong extension still find ``raccoon-1.jpg``).
"""

from __future__ import annotations

import re
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def base_name(name: str) -> str:
    """The file name part of a path written on any OS."""
    return re.split(r"[\\/]", name.strip())[-1]


class ImageIndex:
    """Image files under some folders, looked up by file name or stem.

    Folders earlier in ``folders`` win when two hold the same name.
    """

    def __init__(self, folders: list[Path] = (), *, recursive: bool = False):
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        self.by_lower: dict[str, Path] = {}
        self._seen: set[Path] = set()
        for folder in folders:
            self.add(folder, recursive=recursive)

    def add(self, folder: Path, *, recursive: bool = False) -> None:
        folder = Path(folder)
        if not folder.is_dir() or (folder.resolve(), recursive) in self._seen:
            return
        self._seen.add((folder.resolve(), recursive))
        files = folder.rglob("*") if recursive else folder.iterdir()
        for path in sorted(files):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                self.by_name.setdefault(path.name, path)
                self.by_lower.setdefault(path.name.lower(), path)
                self.by_stem.setdefault(path.stem, path)

    def __len__(self) -> int:
        return len(self.by_name)

    def find(self, *names: str | None) -> Path | None:
        """The first image matching one of ``names`` (paths allowed; only the base name counts)."""
        candidates = [base_name(n) for n in names if n and base_name(n)]
        for name in candidates:
            hit = self.by_name.get(name) or self.by_lower.get(name.lower())
            if hit is not None:
                return hit
        for name in candidates:
            hit = self.by_stem.get(Path(name).stem) or self.by_stem.get(name)
            if hit is not None:
                return hit
        return None

    def paths(self) -> list[Path]:
        return sorted(set(self.by_name.values()))
