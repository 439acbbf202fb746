"""Datasets: the readers for the formats people have, and what they produce.

    from clsloc.datasets import load_dataset, stratified_split
    data = load_dataset(["../shared/datasets/raccoon", "../shared/datasets/kangaroo"])
    train, val = stratified_split(data.records, val_fraction=0.2, seed=0)

Formats (detected from the path, see :mod:`clsloc.datasets.loading`): Pascal VOC
XML, COCO JSON, YOLO txt, CSV. Shared rules (box conventions, clipping,
problems, the target policy for multi-object images) are in
:mod:`clsloc.datasets.records`.
"""

from clsloc.datasets.loading import FORMATS, detect_format, load_dataset
from clsloc.datasets.records import (
    POLICIES,
    Dataset,
    DatasetError,
    GroundTruth,
    Problem,
    Record,
    choose_target,
)
from clsloc.datasets.splits import fingerprint, kfold_splits, stratified_split

__all__ = [
    "FORMATS",
    "POLICIES",
    "Dataset",
    "DatasetError",
    "GroundTruth",
    "Problem",
    "Record",
    "choose_target",
    "detect_format",
    "fingerprint",
    "kfold_splits",
    "load_dataset",
    "stratified_split",
]
