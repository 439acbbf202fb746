"""Does the data pipeline keep up? Images/s of the real fine-tuning loops vs a bare loop.

    .venv/bin/python benchmarks/train_speed.py [--batches 6] [--batch-size 32] [--rounds 5]

Same process, same model (EfficientNet-Lite0, stage-2 fine-tuning of the top
--finetune-depth of the backbone as by default, AdamW, BatchNorm frozen,
channels_last), same optimizer settings:

* bare: forward + loss + backward + step of the default stage 2's network
  (``clsloc.models.views.ThroughFrozen``: the frozen bottom's BatchNorm-folded
  snapshot, then the trained top with its frozen norm layers folded in) on one
  in-memory tensor batch;
* bare, unfolded: the same with the whole network as one module, BatchNorm
  unfolded (how stage 2 ran before the snapshot) — the baseline of the fold;
* bare, depthwise and norm trained too: the default's loop with the top's
  depthwise filters and BatchNorm scale/shift also trained (``--finetune-depthwise
  --finetune-norm``, what stage 2 trained before they stayed as pretrained);
* fresh (the default stage 2): ``clsloc.training.engine.train_one_epoch`` with that
  forward over a DataLoader of ``clsloc.training.data.AugmentedDataset`` on the shared photos —
  decoded images in memory, the default augmentation (``clsloc.training.stages.augmentation``
  plus colour), Preprocessing, loss, update/weight ratio bookkeeping; the next
  batch is fetched during this one's backward pass (``clsloc.training.engine.Prefetcher``);
* fresh, next batch fetched after the step: the same loop without prefetching;
* cached (``--finetune-cache``): the same loop over ``clsloc.training.features.CachedViews``,
  the frozen bottom's output per cached view, so only the trained top runs.
  Building the cache (each view augmented and run through the bottom once) is
  timed apart, per image and view.

The loops are measured in turns (bare, unfolded, everything trained three
times, fresh, fresh without prefetching, cached, ...) so a noisy neighbour on the machine hurts all
alike; the fold's and the kept parameters' ratios are medians over
back-to-back pairs, fresh and cached against the median of the same round's
bare loops. Goal: fresh >= 0.8x bare. It also prints what augmenting one image
asks of the CPU on one thread (the random draws, then the pixel work), beside
the bare step's time per image: both come out of the same two cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results import add_json_flag, save  # noqa: E402 - benchmarks/results.py, beside this script

DATASETS = [str(ROOT / "../shared/datasets/raccoon"), str(ROOT / "../shared/datasets/kangaroo")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of loops; the ratios are medians over them (one round alone is noisy)",
    )
    add_json_flag(parser)
    args = parser.parse_args()

    from clsloc.training.cpu import tune_cpu_allocator

    allocator = tune_cpu_allocator()
    import torch

    torch.set_num_threads(args.threads)
    from clsloc.models.views import ThroughFrozen, Top
    from clsloc.training.config import TrainConfig
    from clsloc.training.data import AugmentedDataset, ImageStore, apply, draw, prepare_splits
    from clsloc.training.engine import compute_loss, set_backbone_trainable, train_one_epoch
    from clsloc.training.features import CachedViews, FeatureCache
    from clsloc.training.fit import make_optimizer, model_for
    from clsloc.training.stages import augmentation, cached_finetune_start, freeze_batchnorm, set_finetune_trainable

    config = TrainConfig(datasets=DATASETS, backbone=args.backbone, finetune_cache=True)
    splits = prepare_splits(config.datasets, [], config.val_split, config.seed, config.policy)
    torch.manual_seed(0)
    model = model_for(config, len(splits.classes)).to(memory_format=torch.channels_last)
    start = cached_finetune_start(model, config)
    model.train()
    model.backbone.apply(freeze_batchnorm)

    def trains(everything: bool) -> None:
        """The default stage 2's trainable set, or everything in the top (depthwise and norm too)."""
        if everything:
            set_backbone_trainable(model, True, config.finetune_depth)
        else:
            set_finetune_trainable(model, config)

    trains(True)
    start_all = model.frozen_stages()
    trained = [p for p in model.parameters() if p.requires_grad]  # a superset of the default's
    trains(False)
    optimizer = make_optimizer(config, [{"params": trained, "lr": 1e-5, "name": "trained"}])
    class_index = {c: i for i, c in enumerate(splits.classes)}
    store = ImageStore(model.preprocessing)
    records = splits.train[: args.batches * args.batch_size]
    t = time.perf_counter()
    store.load(records)
    decode_s = time.perf_counter() - t
    dataset = AugmentedDataset(records, store, class_index, augmentation(config))

    def augmenting_ms() -> tuple[float, float]:
        """(draws, pixel work) in ms per image on one thread: what the pipeline asks of the CPU per image."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            t = time.perf_counter()
            drawn = [draw(store[r], dataset.transform, dataset.colour) for r in records]
            t_draw = time.perf_counter() - t
            t = time.perf_counter()
            for d in drawn:
                apply(d, store.pre)
            return 1000 * t_draw / len(records), 1000 * (time.perf_counter() - t) / len(records)
        finally:
            torch.set_num_threads(threads)

    augmenting_ms()  # warm-up
    draw_ms, pixel_ms = augmenting_ms()
    device = torch.device("cpu")
    h, w = model.preprocessing.size

    t = time.perf_counter()
    cache = FeatureCache()
    views = CachedViews(
        [
            cache.dataset(model, records, store, class_index, device, view=v, depth=start, progress=False)
            for v in range(config.cache_views)
        ]
    )
    cache_ms = 1000 * (time.perf_counter() - t) / (len(records) * config.cache_views)
    model.train()
    model.backbone.apply(freeze_batchnorm)
    top = Top(model, start, fold_norms=True)  # as fit() trains it: the frozen norm layers folded in
    stage2 = ThroughFrozen(cache.trunk(model)[:start], top)  # what fit() runs on fresh images
    # Trained norm layers cannot be folded: fit() runs this top as it is.
    stage2_all = ThroughFrozen(cache.trunk(model)[:start_all], Top(model, start_all))

    def loop(forward, data, prefetch: bool = True) -> float:
        if isinstance(data, CachedViews):
            data.draw(torch.Generator().manual_seed(len(bares)))
        loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)
        stats = train_one_epoch(
            forward,
            loader,
            optimizer,
            **config.loss_options(),
            device=device,
            progress=False,
            prefetch=prefetch,
        )
        return stats.n / stats.seconds

    x = torch.randn(args.batch_size, 3, h, w).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, len(splits.classes), (args.batch_size,))
    b = torch.rand(args.batch_size, 4).sort(dim=1).values

    def bare(forward) -> float:
        start = time.perf_counter()
        for _ in range(args.batches):
            logits, boxes = forward(x)
            loss = compute_loss(logits, boxes, y, b, **config.loss_options()).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return args.batches * args.batch_size / (time.perf_counter() - start)

    def bare_everything() -> float:
        trains(True)
        try:
            return bare(stage2_all)
        finally:
            trains(False)

    bares, unfolded, everything, fresh, serial, cached = [], [], [], [], [], []
    bare(stage2), bare(model), bare_everything()  # warm-up: allocator pools, oneDNN kernels
    for _ in range(args.rounds):
        for _ in range(3):  # gains of 10-25% are within one round's noise here: more, shorter pairs
            bares.append(bare(stage2))
            unfolded.append(bare(model))
            everything.append(bare_everything())
        fresh.append(loop(stage2, dataset))
        serial.append(loop(stage2, dataset, prefetch=False))
        cached.append(loop(top, views))
    bare_ips, unfolded_ips, fresh_ips, cached_ips = max(bares), max(unfolded), max(fresh), max(cached)
    # Each round's loops against the median of the same round's bare loops: a maximum over rounds
    # compares numbers from different minutes of a machine whose speed drifts by 30%.
    per_round = [statistics.median(bares[3 * r : 3 * r + 3]) for r in range(args.rounds)]
    fresh_ratio = statistics.median(f / b for f, b in zip(fresh, per_round))
    cached_ratio = statistics.median(c / b for c, b in zip(cached, per_round))
    fold_ratio = statistics.median(b / u for b, u in zip(bares, unfolded))
    dense_ratio = statistics.median(b / e for b, e in zip(bares, everything))
    print(
        f"backbone {args.backbone} (top {config.finetune_depth:g} trained, as the default stage 2; the cache holds "
        f"trunk stage {start}'s output), batch {args.batch_size}, {args.batches} batches x {args.rounds} rounds, "
        f"{args.threads} threads, glibc allocator tuned: {allocator}; decoding {len(records)} photos once: {decode_s:.1f}s"
    )
    print(f"{'loop':<44} {'images/s':>9}   rounds")
    print(
        f"{'bare (in-memory tensors, as stage 2 runs)':<44} {bare_ips:>9.1f}   " + " ".join(f"{v:.1f}" for v in bares)
    )
    print(
        f"{'bare, unfolded (whole network as one module)':<44} {unfolded_ips:>9.1f}   "
        + " ".join(f"{v:.1f}" for v in unfolded)
    )
    print(
        f"{'bare, depthwise and norm trained too':<44} {max(everything):>9.1f}   "
        + " ".join(f"{v:.1f}" for v in everything)
    )
    print(f"{'fresh (default: augmenting DataLoader)':<44} {fresh_ips:>9.1f}   " + " ".join(f"{v:.1f}" for v in fresh))
    print(
        f"{'fresh, next batch fetched after the step':<44} {max(serial):>9.1f}   "
        + " ".join(f"{v:.1f}" for v in serial)
    )
    print(f"{'cached (--finetune-cache: top only)':<44} {cached_ips:>9.1f}   " + " ".join(f"{v:.1f}" for v in cached))
    print(f"building the cache: {cache_ms:.1f} ms per image and view ({config.cache_views} views), once per run")
    print(
        f"augmenting one image, one thread: draws {draw_ms:.2f} ms, pixel work {pixel_ms:.2f} ms "
        f"(against a bare step of {1000 / statistics.median(bares):.1f} ms per image on {args.threads} threads)"
    )
    prefetch_ratio = statistics.median(f / s for f, s in zip(fresh, serial))
    print(
        f"ratio fresh / bare: {fresh_ratio:.2f}x (goal >= 0.8x); cached / bare: {cached_ratio:.2f}x "
        f"(medians over rounds, against each round's bare median); "
        f"prefetching / not: {prefetch_ratio:.2f}x (median of {len(fresh)} pairs); "
        f"folded (bottom snapshot, top view) / unfolded: {fold_ratio:.2f}x, "
        f"depthwise and norm kept (and folded) / trained: {dense_ratio:.2f}x "
        f"(medians of {len(bares)} back-to-back pairs)"
    )
    if args.json:
        loops = {"bare": bares, "unfolded": unfolded, "everything_trained": everything, "fresh": fresh}
        loops.update({"fresh_no_prefetch": serial, "cached": cached})
        ratios = {"fresh_over_bare": fresh_ratio, "cached_over_bare": cached_ratio, "prefetch": prefetch_ratio}
        ratios.update({"folded_over_unfolded": fold_ratio, "kept_over_trained": dense_ratio})
        save("train_speed", {"images_per_s": loops, "ratios": ratios, "cache_ms_per_image_view": cache_ms,
                             "augment_ms": {"draws": draw_ms, "pixels": pixel_ms}}, args)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
