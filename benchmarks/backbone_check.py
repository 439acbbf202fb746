"""Check the pretrained EfficientNet-Lite ports on real photos before trusting them.

The shared kangaroo photos should mostly come out as ImageNet class 104,
"wallaby, brush kangaroo". Printed side by side: each Lite variant with its
own TF-port scaling (mean 0.498 / std 0.502), the same net fed the usual
ImageNet mean/std (the mistake this check exists to catch), and random
weights (chance).

    .venv/bin/python benchmarks/backbone_check.py [--data ../shared/datasets/kangaroo] [--limit 80]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from clsloc.images import ImageError, decode_image
from clsloc.models.backbones import get_backbone, load_lite_imagenet
from clsloc.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import add_json_flag, save

WALLABY = 104


def top1_wallaby(model, images, preprocessing: Preprocessing) -> tuple[float, float]:
    batch = torch.from_numpy(preprocessing.batch(images))
    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in batch.split(16)])
    top5 = logits.topk(5, dim=1).indices
    return (top5[:, 0] == WALLABY).float().mean().item(), (top5 == WALLABY).any(1).float().mean().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", default="../shared/datasets/kangaroo", help="folder whose images/ hold kangaroo photos"
    )
    parser.add_argument("--limit", type=int, default=80, help="how many photos (sorted by name)")
    add_json_flag(parser)
    args = parser.parse_args()
    torch.set_num_threads(2)

    paths = sorted((Path(args.data) / "images").glob("*.jpg"))[: args.limit]
    images = []
    for path in paths:
        try:
            images.append(decode_image(path))
        except ImageError as exc:  # the truncated photo is expected here
            print(f"skipped {exc}", file=sys.stderr)
    print(f"{len(images)} kangaroo photos from {args.data}\n")
    print(f"{'backbone':<20} {'input':<28} {'top-1 wallaby':>14} {'top-5 wallaby':>14} {'s':>6}")
    found = []
    for variant in (0, 1, 2):
        spec = get_backbone(f"efficientnet_lite{variant}")
        size = (spec.input_size, spec.input_size)
        rows = [
            ("pretrained, TF scaling", load_lite_imagenet(variant).eval(), spec.preprocessing()),
            ("pretrained, ImageNet mean/std", None, Preprocessing(size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)),
            ("random weights", load_lite_imagenet(variant, pretrained=False).eval(), spec.preprocessing()),
        ]
        pretrained = rows[0][1]
        for label, model, preprocessing in rows:
            start = time.perf_counter()
            top1, top5 = top1_wallaby(model or pretrained, images, preprocessing)
            print(f"{spec.name:<20} {label:<28} {top1:>14.1%} {top5:>14.1%} {time.perf_counter() - start:>6.1f}")
            found.append({"backbone": spec.name, "input": label, "top1_wallaby": top1, "top5_wallaby": top5})
    if args.json:
        save("backbone_check", {"photos": len(images), "rows": found}, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
