"""Stratified hold-out and k-fold splits: deterministic, stratified, order-independent; fingerprint."""

from collections import Counter
from pathlib import Path

import pytest

from clsloc.datasets import GroundTruth, Record, fingerprint, kfold_splits, stratified_split


def make_records(counts: dict[str, int]) -> list[Record]:
    records = []
    for label, n in counts.items():
        for i in range(n):
            box = (1.0, 2.0, 30.0, 40.0 + i)
            records.append(
                Record(Path(f"/data/{label}_{i}.jpg"), 64, 64, [GroundTruth(label, box)], "a.xml", label, box)
            )
    return records


def names(records):
    return sorted(r.image.name for r in records)


def test_holdout_is_stratified_deterministic_and_order_independent():
    records = make_records({"a": 50, "b": 20, "c": 2, "d": 1})
    train, val = stratified_split(records, val_fraction=0.2, seed=3)
    assert Counter(r.label for r in val) == {"a": 10, "b": 4, "c": 1}  # d (1 image) stays in training
    assert set(names(train)).isdisjoint(names(val)) and len(train) + len(val) == len(records)
    again = stratified_split(list(reversed(records)), val_fraction=0.2, seed=3)
    assert names(again[1]) == names(val)
    other = stratified_split(records, val_fraction=0.2, seed=4)
    assert names(other[1]) != names(val)
    assert [r.image for r in train] == [r.image for r in records if r in train]  # input order kept


def test_holdout_rejects_bad_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(make_records({"a": 4}), val_fraction=1.0)


def test_kfold_covers_every_record_once_and_is_balanced():
    records = make_records({"a": 23, "b": 12})
    folds = kfold_splits(records, k=5, seed=0)
    assert len(folds) == 5
    val_names = [n for _, val in folds for n in names(val)]
    assert sorted(val_names) == names(records)  # each record validated exactly once
    sizes = [len(val) for _, val in folds]
    assert max(sizes) - min(sizes) <= 1
    for train, val in folds:
        assert set(names(train)).isdisjoint(names(val)) and len(train) + len(val) == len(records)
        per_class = Counter(r.label for r in val)
        assert 4 <= per_class["a"] <= 5 and 2 <= per_class["b"] <= 3
    assert [names(v) for _, v in kfold_splits(records, k=5, seed=0)] == [names(v) for _, v in folds]
    with pytest.raises(ValueError, match="at least 2"):
        kfold_splits(records, k=1)
    with pytest.raises(ValueError, match="need at least"):
        kfold_splits(records[:3], k=5)


def test_fingerprint_changes_with_the_data_not_the_order():
    records = make_records({"a": 3, "b": 3})
    fp = fingerprint(records)
    assert fp.startswith("sha256:") and fp == fingerprint(list(reversed(records)))
    changed = make_records({"a": 3, "b": 3})
    changed[0].box = (1.0, 2.0, 31.0, 40.0)
    assert fingerprint(changed) != fp
    assert fingerprint(records[:-1]) != fp
