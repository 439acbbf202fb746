"""Training data: records -> decoded images in memory -> network inputs.

Every image is decoded once (``clsloc.images.decode_image``, EXIF applied) and
kept in memory twice:

* ``fixed``: resized to the network input by the model's
  ``clsloc.preprocess.Preprocessing`` — exactly what export and serving feed
  the network. Validation and the cached stage-1 features use this view.
* ``large``: a copy no larger than ``AUGMENT_SIDE_FACTOR`` x the input, for
  augmentation (crops need pixels to spare). Augmented images go through the
  same ``Preprocessing`` at the end, so normalization has one definition.

Images stay RGB uint8 (H, W, 3) arrays from decoding to normalization. The
augmentation's definition is torchvision's (``transforms.v2``); ``warp`` and
``jitter_colour`` run it on those arrays without converting to torch's
channels-first layout and back, and a test holds them bit for bit to
torchvision's own kernels.

Boxes travel as ``tv_tensors.BoundingBoxes`` through ``transforms.v2``, so a
flip or crop moves the box with the pixels. The crop never cuts the target
object: it always contains the whole target box. Every other box of the
target's class travels with it (clipped by the crop, left out once nothing
of it is in view): training may take the box loss against the nearest one
(``--box-target``). A dataset item's boxes are ``(M, 4)``, the target first,
rows of NaN filling up to the most any of the dataset's images has (``pad_boxes``).

A batch is augmented in two halves (``draw``, ``apply``): every random number
first, on the calling thread and in the order one image after the other
would draw them from torch's global RNG, then the pixel work on threads. The
inputs are bit for bit those of augmenting each image in turn, and training
stays reproducible (``--resume``, cross-validation) while both cores work.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional._color import _blend, _rgb_to_grayscale_image  # see jitter_colour

from clsloc.boxes import mirror_boxes
from clsloc.datasets import Record, load_dataset, stratified_split
from clsloc.images import decode_image
from clsloc.models.refine import refine_windows
from clsloc.preprocess import Preprocessing

log = logging.getLogger("clsloc.train")

AUGMENT_SIDE_FACTOR = 1.5
# A first pass's box as the refining pass's training windows assume it: centre off by up to this share
# of the box's size, size off by up to this factor (either way).
CONTEXT_SHIFT, CONTEXT_SCALE = 0.15, 1.25


class DataError(ValueError):
    """Data that cannot be trained on (one class, train/val class sets that differ, ...)."""


# -- loading and splitting ------------------------------------------------------------


@dataclass
class Splits:
    train: list[Record]
    val: list[Record]
    classes: list[str]
    skipped: int  # records the dataset check left out (problems), all sources together


def load_records(paths: list[str], policy: str, *, role: str = "training") -> tuple[list[Record], list[str], int]:
    """Load datasets, log every problem with a count (never silently), return (records, classes, n_problems)."""
    dataset = load_dataset([str(p) for p in paths], policy=policy)
    problems = list(dataset.problems)
    skipped = [p for p in problems if getattr(p, "skipped", True)]
    if problems:
        kinds = Counter(p.kind for p in skipped)
        log.warning(
            "%s data: skipped %d image(s) the dataset check flagged (%s); %d other warning(s) about kept images",
            role,
            len(skipped),
            ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())) or "none",
            len(problems) - len(skipped),
        )
        for problem in problems[:20]:
            log.warning(
                "  %s %s: %s (%s)",
                "skipped" if getattr(problem, "skipped", True) else "warning",
                problem.file,
                problem.kind,
                problem.detail,
            )
        if len(problems) > 20:
            log.warning("  ... and %d more (run 'clsloc data check' for the full list)", len(problems) - 20)
    if not dataset.records:
        raise DataError(f"{role} data {', '.join(map(str, paths))}: no usable images ({len(problems)} problem(s))")
    return list(dataset.records), list(dataset.classes), len(skipped)


def check_classes(train: list[Record], val: list[Record]) -> list[str]:
    """The sorted class list; a clear error before any training when it cannot work."""
    train_classes = sorted({r.label for r in train})
    if len(train_classes) < 2:
        raise DataError(
            f"training data has only one class ({train_classes[0] if train_classes else 'none'!r}): "
            "classification needs at least two classes"
        )
    val_classes = sorted({r.label for r in val})
    if val and set(val_classes) != set(train_classes):
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise DataError(
            f"training and validation class sets differ: only in training {only_train}, only in validation {only_val}"
        )
    return train_classes


def prepare_splits(datasets: list[str], val: list[str], val_split: float, seed: int, policy: str) -> Splits:
    records, _, skipped = load_records(datasets, policy, role="training")
    if val:
        val_records, _, skipped_val = load_records(val, policy, role="validation")
        skipped += skipped_val
        train_records = records
    else:
        check_classes(records, [])  # one class only: say so before splitting
        train_records, val_records = stratified_split(records, val_fraction=val_split, seed=seed)
    if not val_records:
        raise DataError(
            f"the validation split is empty ({len(records)} images, --val-split {val_split}): "
            "use more images, a larger --val-split, or an explicit --val"
        )
    classes = check_classes(train_records, val_records)
    return Splits(list(train_records), list(val_records), classes, skipped)


# -- decoded images in memory ---------------------------------------------------------


def _no_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


@dataclass
class Sample:
    fixed: np.ndarray  # uint8 (H, W, 3) at the network input size (Preprocessing.resize_image)
    large: np.ndarray  # uint8 (h, w, 3), aspect kept, for augmentation
    box: np.ndarray  # normalized xyxy of the training target
    others: np.ndarray = field(default_factory=_no_boxes)  # (K, 4): the other boxes of the target's class

    @property
    def boxes(self) -> np.ndarray:
        """(1 + K, 4): the target's box, then the others."""
        return np.concatenate([self.box[None], self.others])


def box_slots(records: list[Record]) -> int:
    """Rows of boxes per item of a dataset of ``records``: the most boxes of its class any image has."""
    return max((len(r.label_boxes_normalized) for r in records), default=1)


def pad_boxes(boxes: np.ndarray, slots: int) -> np.ndarray:
    """(M, 4) normalized xyxy -> (slots, 4) float32: boxes with no area left (cropped away) and the
    rows up to ``slots`` are NaN, which the loss reads as "no box here"."""
    out = np.full((slots, 4), np.nan, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[:slots]
    visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    visible[0] = True  # the target is always there (the crop keeps it whole)
    out[: len(boxes)][visible] = boxes[visible]
    return out


_pools: dict[int, ThreadPoolExecutor] = {}


def pixel_pool(threads: int) -> ThreadPoolExecutor:
    """One thread pool per process (a DataLoader worker forks without the parent's threads).

    Its threads run torch's ops single-threaded: each would otherwise start an
    OpenMP team of its own beside the one training computes with, and on the
    2-core CPU the oversubscribed cores cost more than the teams gave (the
    fresh stage-2 loop ran measurably closer to a bare loop without them), and
    the inputs are the same bit for bit.
    """
    pid = os.getpid()
    if pid not in _pools:
        _pools[pid] = ThreadPoolExecutor(
            max_workers=max(1, threads),
            thread_name_prefix="clsloc-pixels",
            initializer=torch.set_num_threads,
            initargs=(1,),
        )
    return _pools[pid]


class ImageStore:
    """Decode each record once; hand out fixed and augmentable views."""

    def __init__(self, preprocessing: Preprocessing, threads: int = 2):
        self.pre = preprocessing
        self.threads = threads
        self._samples: dict[str, Sample] = {}

    def _load(self, record: Record) -> Sample:
        rgb = decode_image(record.image)
        fixed = self.pre.resize_image(rgb)
        max_side = int(AUGMENT_SIDE_FACTOR * max(self.pre.size))
        h, w = rgb.shape[:2]
        if max(h, w) > max_side:
            scale = max_side / max(h, w)
            new = (max(1, round(w * scale)), max(1, round(h * scale)))
            rgb = np.array(Image.fromarray(rgb).resize(new, Image.Resampling.BILINEAR))
        boxes = np.clip(np.asarray(record.label_boxes_normalized, dtype=np.float32), 0.0, 1.0)
        return Sample(fixed=fixed, large=np.ascontiguousarray(rgb), box=boxes[0], others=boxes[1:])

    def load(self, records: list[Record]) -> None:
        todo = [r for r in records if str(r.image) not in self._samples]
        if not todo:
            return
        for record, sample in zip(todo, self.map(self._load, todo)):  # Pillow decodes without the GIL
            self._samples[str(record.image)] = sample

    def map(self, fn, items):
        """``fn`` over ``items`` on the store's threads (decoding, augmentation's pixel work), in order."""
        return pixel_pool(self.threads).map(fn, items)

    def __getitem__(self, record: Record) -> Sample:
        key = str(record.image)
        if key not in self._samples:
            self._samples[key] = self._load(record)
        return self._samples[key]


# -- augmentation ----------------------------------------------------------------------


class RandomCropContaining(v2.Transform):
    """Crop a random window that always contains the (first) box whole.

    Each side of the window is drawn between ``min_scale`` x the image side and
    the full side (so the aspect ratio jitters too), never smaller than the box;
    its position is drawn among the windows that contain the box. Zooming in
    on the object like this is the scale augmentation the recipe asks for,
    without the risk of RandomIoUCrop cutting the object away.
    """

    def __init__(self, min_scale: float = 0.4, p: float = 0.8, *, context_p: float = 0.0, context: float = 2.0):
        super().__init__()
        self.min_scale = min_scale
        self.p = p
        self.context_p = context_p
        self.context = context

    def make_params(self, flat_inputs: list) -> dict:
        boxes = next(x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes))
        height, width = boxes.canvas_size
        x1, y1, x2, y2 = [float(v) for v in boxes.reshape(-1, 4)[0]]
        x1, x2 = max(0.0, min(x1, x2)), min(float(width), max(x1, x2))
        y1, y2 = max(0.0, min(y1, y2)), min(float(height), max(y1, y2))
        if self.context_p and float(torch.rand(())) < self.context_p:  # no draw at all when off
            return self._context_window(width, height, (x1, y1, x2, y2))
        if torch.rand(()) >= self.p:
            return {"top": 0, "left": 0, "height": height, "width": width}

        def window(size: int, lo: float, hi: float) -> tuple[int, int]:
            need = max(1, math.ceil(hi) - math.floor(lo))
            scale = self.min_scale + (1.0 - self.min_scale) * float(torch.rand(()))
            length = min(size, max(need, round(scale * size)))
            start_min = max(0, math.ceil(hi) - length)
            start_max = min(math.floor(lo), size - length)
            if start_max < start_min:
                return 0, size
            start = start_min + int(torch.randint(start_max - start_min + 1, ()))
            return start, length

        left, w = window(width, x1, x2)
        top, h = window(height, y1, y2)
        return {"top": top, "left": left, "height": h, "width": w}

    def _context_window(self, width: int, height: int, box: tuple[float, float, float, float]) -> dict:
        """What the refining pass looks at (``clsloc.models.refine.refine_windows``) around the box as a
        first pass might have put it: its centre moved by up to ``CONTEXT_SHIFT`` of its size, its size
        scaled by up to ``CONTEXT_SCALE``; widened where needed to keep the whole box."""
        x1, y1, x2, y2 = box
        shift = (torch.rand(2) * 2 - 1) * CONTEXT_SHIFT
        scale = math.exp((float(torch.rand(())) * 2 - 1) * math.log(CONTEXT_SCALE))
        cx, cy = (x1 + x2) / 2 + float(shift[0]) * (x2 - x1), (y1 + y2) / 2 + float(shift[1]) * (y2 - y1)
        half_w, half_h = scale * (x2 - x1) / 2, scale * (y2 - y1) / 2
        guess = torch.tensor(
            [[(cx - half_w) / width, (cy - half_h) / height, (cx + half_w) / width, (cy + half_h) / height]]
        )
        wx0, wy0, wx1, wy1 = refine_windows(guess, self.context)[0].tolist()
        left, right = min(math.floor(wx0 * width), math.floor(x1)), max(math.ceil(wx1 * width), math.ceil(x2))
        top, bottom = min(math.floor(wy0 * height), math.floor(y1)), max(math.ceil(wy1 * height), math.ceil(y2))
        left, top = max(0, left), max(0, top)
        return {"top": top, "left": left, "height": min(height, bottom) - top, "width": min(width, right) - left}

    def transform(self, inpt, params: dict):
        return self._call_kernel(F.crop, inpt, **params)


def train_transform(
    crop_p: float = 0.5,
    crop_scale: float = 0.7,
    zoom_out_p: float = 0.0,
    zoom_out_max: float = 2.0,
    context_p: float = 0.0,
    context: float = 2.0,
) -> v2.Compose:
    """The geometric part: crop that keeps the object, flip (boxes move with the pixels).

    The crop is mild on purpose: zooming in on the object makes boxes larger than
    validation ever sees them, and the box head learns that prior (a stronger crop
    gave a clearly lower validation mean IoU on the shared photos). With a refining
    pass, validation does see closer views: ``context_p`` of the crops are the
    window it looks at (``context`` x the box, around a box as a first pass finds it).
    """
    crop = RandomCropContaining(min_scale=crop_scale, p=crop_p, context_p=context_p, context=context)
    steps = [crop, v2.RandomHorizontalFlip(p=0.5)]
    if zoom_out_p > 0:
        # Grey (127: about 0 after normalization) canvas around the image: smaller objects than the photos have.
        steps.append(
            v2.RandomZoomOut(fill={tv_tensors.Image: 127, "others": 0}, side_range=(1.0, zoom_out_max), p=zoom_out_p)
        )
    return v2.Compose(steps)


def colour_transform() -> v2.ColorJitter:
    """The photometric part, applied after resizing to the input size: colour jitter
    costs per pixel, so it runs on the smallest image. No hue jitter: it costs several
    times the rest of the augmentation for a shift of a few degrees."""
    return v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3)


@dataclass
class Draw:
    """Every random choice of one augmentation, drawn ahead of the pixel work (``draw``)."""

    sample: Sample
    steps: list  # (geometric transform, its params; None where a random-apply transform skipped)
    colour: dict  # the colour jitter's params
    boxes: np.ndarray  # (1 + K, 4) normalized xyxy after the geometric steps: the target's, then the others

    @property
    def box(self) -> np.ndarray:
        return self.boxes[0]


def _drawn(transform: v2.Transform, boxes: tv_tensors.BoundingBoxes):
    """-> (params, boxes after the transform): ``transform`` run on the boxes alone, its params
    recorded. A v2 transform draws its random numbers in ``forward`` and ``make_params`` from the
    sizes and boxes only, never from pixels, so these are the draws it makes with the image."""
    recorded = []
    make_params = transform.make_params

    def recording(flat_inputs):
        recorded.append(make_params(flat_inputs))
        return recorded[-1]

    transform.make_params = recording  # an instance attribute over the method, for this one call
    try:
        boxes = transform(boxes)
    finally:
        del transform.make_params
    return (recorded[0] if recorded else None), boxes


def draw(sample: Sample, geometric, colour: v2.ColorJitter | None = None) -> Draw:
    """The random half of an augmentation: every draw from torch's global RNG, in the order the
    transforms would make them on the image (geometric steps, then the colour jitter's)."""
    h, w = sample.large.shape[:2]
    box_px = torch.as_tensor(sample.boxes * np.array([w, h, w, h], dtype=np.float32)).reshape(-1, 4)
    boxes = tv_tensors.BoundingBoxes(box_px, format="XYXY", canvas_size=(h, w))
    steps = []
    for transform in geometric.transforms if isinstance(geometric, v2.Compose) else [geometric]:
        params, boxes = _drawn(transform, boxes)
        steps.append((transform, params))
    colour_params = colour.make_params([]) if colour is not None else {}  # ColorJitter looks at no input
    out_h, out_w = boxes.canvas_size
    out = boxes.reshape(-1, 4).numpy() / np.array([out_w, out_h, out_w, out_h], dtype=np.float32)
    return Draw(sample, steps, colour_params, np.clip(out, 0.0, 1.0).astype(np.float32))


def _fill_of(transform: v2.RandomZoomOut):
    """The zoom-out canvas's grey for an image, as a plain int (None: a per-channel or float fill)."""
    fill = transform.fill
    if isinstance(fill, dict):
        fill = fill.get(tv_tensors.Image, fill.get("others", 0))
    return fill if isinstance(fill, int) else None


def warp(drawn: Draw) -> np.ndarray:
    """The drawn geometric steps on the pixels: -> RGB uint8 HWC of any size.

    The steps the default augmentation has are pure pixel copies (crop, mirror, a grey canvas),
    done here as numpy views on the HWC image: the same pixels as torchvision's kernels on a CHW
    tensor, without the two layout conversions, and the same inputs bit for bit. Any other step
    runs torchvision's own kernel."""
    image = drawn.sample.large
    for transform, params in drawn.steps:
        if params is None:  # a random-apply step that did not fire
            continue
        if isinstance(transform, RandomCropContaining):  # F.crop inside the image: a slice
            top, left = params["top"], params["left"]
            image = image[top : top + params["height"], left : left + params["width"]]
        elif isinstance(transform, v2.RandomHorizontalFlip):
            image = image[:, ::-1]
        elif isinstance(transform, v2.RandomZoomOut) and (fill := _fill_of(transform)) is not None:
            left, top, right, bottom = params["padding"]
            h, w = image.shape[:2]
            canvas = np.full((top + h + bottom, left + w + right, 3), fill, dtype=np.uint8)
            canvas[top : top + h, left : left + w] = image
            image = canvas
        else:
            chw = tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))  # a writable copy
            image = transform.transform(chw, params).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(image)


_VALUES = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 256)  # every uint8 value, as a 1-channel image


def jitter_colour(rgb: np.ndarray, params: dict) -> np.ndarray:
    """``v2.ColorJitter.transform(image, params)`` on an RGB uint8 (H, W, 3) array, bit for bit.

    The image goes planar (CHW in memory) once: torchvision's kernels run fastest on that layout
    (saturation twice as fast as on an HWC view) and the result comes back as an HWC view of the
    planes, which ``Preprocessing.normalize`` reads plane by plane. Brightness and contrast map
    each uint8 value through one function for the whole image, so torchvision's kernel runs on
    the 256 possible values and the image is looked up in the result (contrast's grey mean still
    comes from the image, computed as torchvision does). Saturation and hue mix channels: their
    kernels run on the planes."""
    if not params:  # no colour step was drawn
        return rgb
    planes = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    for fn_id in params["fn_idx"].tolist():
        if fn_id == 0 and params["brightness_factor"] is not None:
            planes = np.take(
                F.adjust_brightness_image(_VALUES, params["brightness_factor"]).reshape(256).numpy(), planes
            )
        elif fn_id == 1 and params["contrast_factor"] is not None:
            grey = _rgb_to_grayscale_image(torch.from_numpy(planes), num_output_channels=1, preserve_dtype=False)
            mean = torch.mean(grey.floor_(), dim=(-3, -2, -1), keepdim=True)  # as F.adjust_contrast_image
            planes = np.take(_blend(_VALUES, mean, params["contrast_factor"]).reshape(256).numpy(), planes)
        elif fn_id == 2 and params["saturation_factor"] is not None:
            planes = F.adjust_saturation_image(torch.from_numpy(planes), params["saturation_factor"]).numpy()
        elif fn_id == 3 and params["hue_factor"] is not None:
            planes = F.adjust_hue_image(torch.from_numpy(planes), params["hue_factor"]).numpy()
    return planes.transpose(1, 2, 0)


def apply(drawn: Draw, pre: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """The pixel half (no random numbers, so a batch of it may run on threads in any order):
    -> (float32 CHW network input, (1 + K, 4) normalized xyxy boxes, the target's first)."""
    return pre.normalize(jitter_colour(pre.resize_image(warp(drawn)), drawn.colour)), drawn.boxes


def augment(sample: Sample, transform) -> tuple[np.ndarray, np.ndarray]:
    """Augment one sample geometrically: -> (RGB uint8 HWC of any size, normalized xyxy box in it)."""
    drawn = draw(sample, transform)
    return warp(drawn), drawn.box


def applied(drawn: list[Draw], store: ImageStore):
    """``apply`` over a batch on the store's threads, in order."""
    return store.map(lambda d: apply(d, store.pre), drawn)


def as_items(records: list[Record], class_index: dict[str, int], indices: list[int], outs, slots: int) -> list:
    """(input, boxes) pairs -> the datasets' items: (input tensor, class index, (slots, 4) boxes)."""
    return [
        (torch.from_numpy(x), class_index[records[i].label], torch.from_numpy(pad_boxes(boxes, slots)))
        for i, (x, boxes) in zip(indices, outs)
    ]


# -- torch datasets -------------------------------------------------------------------


class FixedDataset(torch.utils.data.Dataset):
    """Records as the exported model sees them: Preprocessing of the decoded image.

    ``view`` picks a fixed variant for the cached stage-1 features: 0 the image
    itself, 1 its mirror image, 2 and up one augmented copy each (crop, flip,
    colour) drawn from a seed of (view, file name) — the same copy every time,
    so features computed once stay valid. ``crop`` is the augmented views'
    (probability, smallest side) of the object-keeping crop, and optionally
    (probability, context) of the refining pass's window (``train_transform``).
    """

    def __init__(
        self,
        records: list[Record],
        store: ImageStore,
        class_index: dict[str, int],
        view: int = 0,
        crop: tuple[float, ...] | None = None,
    ):
        self.records, self.store, self.class_index, self.view = records, store, class_index, view
        self.slots = box_slots(records)
        # The augmented views crop as --crop-p / --crop-scale say (None: train_transform's defaults). Zoom-out
        # stays a stage-2 augmentation: the defaults were measured with stage-1 views without it.
        crop_p, crop_scale, context_p, context = (*(crop or (0.5, 0.7)), 0.0, 2.0)[:4]
        self.transform = (
            train_transform(crop_p, crop_scale, context_p=context_p, context=context) if view >= 2 else None
        )
        self.colour = colour_transform()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list:
        """A batch (what the DataLoader fetches): an augmented view's draws are made in order, each
        from its own seed, then the pixel work runs on the store's threads."""
        if self.view >= 2:
            drawn = []
            for i in indices:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(zlib.crc32(f"{self.view}:{Path(self.records[i].image).name}".encode()))
                    drawn.append(draw(self.store[self.records[i]], self.transform, self.colour))
            outs = applied(drawn, self.store)
        else:
            outs = map(self._plain, indices)
        return as_items(self.records, self.class_index, indices, outs, self.slots)

    def _plain(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.store[self.records[i]]
        rgb, boxes = sample.fixed, sample.boxes
        if self.view == 1:
            rgb = np.ascontiguousarray(rgb[:, ::-1])
            boxes = mirror_boxes(boxes)
        return self.store.pre.normalize(rgb), boxes


class AugmentedDataset(torch.utils.data.Dataset):
    """Training records with fresh augmentation every epoch."""

    def __init__(
        self, records: list[Record], store: ImageStore, class_index: dict[str, int], transform=None, colour=None
    ):
        self.records, self.store, self.class_index = records, store, class_index
        self.slots = box_slots(records)
        self.transform = transform or train_transform()
        self.colour = colour or colour_transform()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list:
        """A batch (what the DataLoader fetches): the random draws in order on this thread, exactly as
        one item after the other would make them, then the pixel work on the store's threads (two
        cores augment faster than one, with the same numbers)."""
        drawn = [draw(self.store[self.records[i]], self.transform, self.colour) for i in indices]
        # the same resize and normalize as serving (Preprocessing), colour jitter in between
        return as_items(self.records, self.class_index, indices, applied(drawn, self.store), self.slots)
