"""Deterministic splits (stratified by the training target's label) and a data fingerprint.

Records are put in a canonical order (by image path) before the seeded
shuffle, so the same records give the same split whatever order they were
read in. Returned lists keep the input order.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import numpy as np

from clsloc.datasets.records import Record


def _by_label(records: list[Record]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i in sorted(range(len(records)), key=lambda i: (str(records[i].image), records[i].annotation)):
        groups[records[i].label].append(i)
    return dict(sorted(groups.items()))


def stratified_split(
    records: list[Record], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    """Hold-out split: about ``val_fraction`` of each class goes to validation.

    Every class with at least 2 images gets at least one validation and one
    training image; a class with a single image stays in training.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    rng = np.random.default_rng(seed)
    val_ids: set[int] = set()
    for members in _by_label(records).values():
        n = len(members)
        n_val = 0 if n < 2 else min(max(int(round(n * val_fraction)), 1), n - 1)
        order = rng.permutation(n)
        val_ids.update(members[j] for j in order[:n_val])
    train = [r for i, r in enumerate(records) if i not in val_ids]
    val = [r for i, r in enumerate(records) if i in val_ids]
    return train, val


def kfold_splits(records: list[Record], k: int = 5, seed: int = 0) -> list[tuple[list[Record], list[Record]]]:
    """``k`` (train, val) pairs; every record is in exactly one val fold, classes spread evenly."""
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if k > len(records):
        raise ValueError(f"k={k} folds need at least {k} records, got {len(records)}")
    rng = np.random.default_rng(seed)
    fold_of: dict[int, int] = {}
    offset = 0  # continue the round robin across classes so fold sizes differ by at most one
    for members in _by_label(records).values():
        for j, position in enumerate(rng.permutation(len(members))):
            fold_of[members[position]] = (offset + j) % k
        offset += len(members)
    return [
        (
            [r for i, r in enumerate(records) if fold_of[i] != fold],
            [r for i, r in enumerate(records) if fold_of[i] == fold],
        )
        for fold in range(k)
    ]


def fingerprint(records: list[Record]) -> str:
    """A short hash of what the model learns from: image names and sizes, file sizes, targets, all boxes.

    Paths are reduced to file names so the same data on another machine gets
    the same fingerprint; file sizes catch a replaced image cheaply.
    """
    rows = []
    for r in records:
        try:
            nbytes = r.image.stat().st_size
        except OSError:
            nbytes = -1
        rows.append(
            [
                r.image.name,
                nbytes,
                r.width,
                r.height,
                r.label,
                [round(v, 2) for v in r.box],
                [[o.label, [round(v, 2) for v in o.box]] for o in r.objects],
            ]
        )
    rows.sort(key=lambda row: json.dumps(row))
    digest = hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()
    return f"sha256:{digest[:16]}"
