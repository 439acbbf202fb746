"""The frozen-feature cache: what the frozen network computes, computed once.

Stage 1 trains the heads on the frozen backbone, whose output never changes,
so the backbone runs ONCE over each image and each of its fixed views (as
is, mirrored, augmented copies drawn once) and the heads train on what it
computed. With ``--finetune-cache`` stage 2 does the same with its frozen
bottom's output, drawing one cached view per image each epoch. The cache is
shared by both stages, by the folds of ``clsloc cv`` and by the trials of
``clsloc tune``.

The frozen trunk runs as a BatchNorm-folded inference snapshot
(``ClsLocNet.frozen_trunk``): the same function up to float rounding, without
the norm layers' work.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from clsloc.progress import progress_bar
from clsloc.training.data import FixedDataset
from clsloc.training.engine import Prefetcher, channels_last

# Images per forward pass where nothing trains (features, validation). Larger batches cost more per
# image on a CPU here, and their larger activations fragmented the heap (glibc's mmap is off for
# training, training/cpu.py), which slowed every later epoch.
INFERENCE_BATCH = 32


@torch.no_grad()
def compute_features(
    trunk: nn.Sequential,
    loader,
    device: torch.device,
    *,
    stops=(None,),
    desc: str = "features",
    progress: bool = True,
    amp: bool = False,
) -> list[torch.utils.data.TensorDataset]:
    """Run the frozen trunk (its stages in order, e.g. ``ClsLocNet.frozen_trunk()``) once over
    ``loader``, keeping the output after each of ``stops`` (stage counts, ascending; None = the
    whole trunk: the heads' input).

    -> one TensorDataset(activations, labels, boxes) per stop, from a single pass.
    """
    trunk.eval()
    outs: list[list[torch.Tensor]] = [[] for _ in stops]
    labels, boxes = [], []
    batches = Prefetcher(loader)  # the views draw from their own seeds: any order of fetching gives the same
    bar = progress_bar(batches, enabled=progress, total=len(loader), desc=desc, leave=False, unit="batch")
    for x, y, b in bar:
        batches.fetch_next()
        x = channels_last(x.to(device), device)
        done = 0
        with torch.autocast(device.type, enabled=amp):
            for out, stop in zip(outs, stops):
                x = trunk[done:stop](x)
                done = stop
                out.append(x.float().contiguous().cpu())
        labels.append(torch.as_tensor(y))
        boxes.append(torch.as_tensor(b))
    labels_t, boxes_t = torch.cat(labels), torch.cat(boxes)
    return [torch.utils.data.TensorDataset(torch.cat(out), labels_t, boxes_t) for out in outs]


class FeatureCache:
    """What the frozen network computes per (record, view, depth), shared by stages, folds and trials.

    ``depth`` counts trunk stages (``clsloc.models.backbones.trunk_stages``): None is
    the whole trunk (stage 1's features, the heads' input); k is the output of
    the frozen bottom that stage 2 fine-tunes on top of. Both come from one
    pass over each view when asked together (``also``).
    """

    def __init__(self):
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._trunks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def trunk(self, model) -> nn.Sequential:
        """``model``'s trunk as a BatchNorm-folded inference snapshot (``ClsLocNet.frozen_trunk``),
        made on first use: what every cached activation comes from, and stage 2's frozen bottom
        (sliced) on fresh images. Only its frozen stages may be used once training has begun."""
        if model not in self._trunks:
            self._trunks[model] = model.frozen_trunk()
        return self._trunks[model]

    def dataset(
        self,
        model,
        records,
        store,
        class_index,
        device,
        *,
        view=0,
        depth: int | None = None,
        also: tuple[int, ...] = (),
        crop: tuple[float, float] | None = None,
        amp=False,
        progress=True,
        desc="",
    ) -> torch.utils.data.TensorDataset:
        """(activations at ``depth``, labels, target boxes) of ``records``'s ``view``, computed on first use."""
        variant = crop if view >= 2 else None  # only the augmented views depend on the crop settings

        def key(record, stop):
            return str(record.image), view, variant, stop

        todo = [r for r in records if key(r, depth) not in self._cache]
        if todo:
            wanted = {depth, *also}  # trunk depths in ascending order, the whole trunk (None) last
            stops = sorted(d for d in wanted if d is not None) + ([None] if None in wanted else [])
            loader = torch.utils.data.DataLoader(
                FixedDataset(todo, store, class_index, view=view, crop=crop), batch_size=INFERENCE_BATCH
            )
            outs = compute_features(
                self.trunk(model), loader, device, stops=stops, desc=desc, amp=amp, progress=progress
            )
            for stop, ds in zip(stops, outs):
                for r, f, b in zip(todo, ds.tensors[0], ds.tensors[2]):
                    self._cache[key(r, stop)] = (f.clone(), b[: len(r.label_boxes_normalized)].clone())
        feats = torch.stack([self._cache[key(r, depth)][0] for r in records])
        boxes = stack_boxes([self._cache[key(r, depth)][1] for r in records])
        labels = torch.tensor([class_index[r.label] for r in records])
        return torch.utils.data.TensorDataset(feats, labels, boxes)


def stack_boxes(boxes: list[torch.Tensor]) -> torch.Tensor:
    """Per-image (M_i, 4) boxes -> (N, max M_i, 4), NaN rows filling up (``training.data.pad_boxes``)."""
    slots = max(len(b) for b in boxes)
    return torch.stack([torch.cat([b, b.new_full((slots - len(b), 4), float("nan"))]) for b in boxes])


class CachedViews(torch.utils.data.Dataset):
    """Stage 2 on cached activations: item i is one of record i's cached views, drawn anew
    each epoch (``draw``) — the fixed-view stand-in for fresh augmentation."""

    def __init__(self, views: list[torch.utils.data.TensorDataset]):
        self.views = views
        self.choice = torch.zeros(len(views[0]), dtype=torch.long)

    def draw(self, generator: torch.Generator) -> None:
        if len(self.views) > 1:  # one view: nothing to draw, and the shuffle's random stream stays as it was
            self.choice = torch.randint(len(self.views), (len(self),), generator=generator)

    def __len__(self) -> int:
        return len(self.views[0])

    def __getitem__(self, i: int):
        return self.views[int(self.choice[i])][i]
