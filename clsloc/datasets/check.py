"""What ``clsloc data check`` reports about a dataset: counts, spreads, problems, a verdict.

``images`` counts the annotated images that were found, including those
training will skip (an unreadable file, a multi-object image under policy
``skip``); ``usable_images`` is what training gets. Problems are listed one
by one with their file. The data is *usable* when training can run on it:
at least one usable image, at least two classes, and every dataset path
given could be read.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from clsloc.datasets.records import Dataset


def _quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    points = {"min": 0, "p10": 10, "p25": 25, "median": 50, "p75": 75, "p90": 90, "max": 100}
    return {name: round(float(np.percentile(arr, q)), 4) for name, q in points.items()}


def summarize(dataset: Dataset) -> dict:
    found = dataset.records + dataset.skipped
    objects_per_class = Counter(o.label for r in found for o in r.objects)
    boxes_per_image = Counter(len(r.objects) for r in found)
    box_sizes = [
        float(np.sqrt(max(o.box[2] - o.box[0], 0) * max(o.box[3] - o.box[1], 0) / (r.width * r.height)))
        for r in found
        if r.width > 0 and r.height > 0
        for o in r.objects
    ]
    usable_classes = sorted({r.label for r in dataset.records})
    reasons = [f"cannot read {p.file}: {p.detail}" for p in dataset.problems if p.kind == "unreadable_dataset"]
    if not dataset.records:
        reasons.append("no usable images")
    elif len(usable_classes) < 2:
        reasons.append(f"only one class ({usable_classes[0]}): a classifier needs at least two")
    counts = [len(r.objects) for r in found]
    return {
        "sources": dataset.sources,
        "images": len(found),
        "usable_images": len(dataset.records),
        "classes": dict(sorted(Counter(r.label for r in found).items())),
        "objects": sum(objects_per_class.values()),
        "objects_per_class": dict(sorted(objects_per_class.items())),
        "boxes_per_image": {
            "histogram": {str(k): v for k, v in sorted(boxes_per_image.items())},
            "mean": round(float(np.mean(counts)), 3) if counts else None,
            "max": max(counts) if counts else None,
        },
        # sqrt(box area / image area): 0.1 is a box a tenth of the image's side, 1.0 the whole image
        "box_size": _quantiles(box_sizes),
        "problems": [p.to_dict() for p in dataset.problems],
        "problem_counts": dict(sorted(Counter(p.kind for p in dataset.problems).items())),
        "usable": not reasons,
        "reasons": reasons,
    }


def format_summary(summary: dict) -> str:
    """The human-readable report: a summary table, then every problem."""
    lines = [f"datasets  {', '.join(summary['sources']) or '-'}"]
    lines.append(f"images    {summary['images']} found, {summary['usable_images']} usable for training")
    lines.append(f"objects   {summary['objects']}")
    lines.append("")
    names = sorted(set(summary["classes"]) | set(summary["objects_per_class"]))
    width = max([len("class")] + [len(n) for n in names])
    lines.append(f"{'class':<{width}}  {'images':>7}  {'objects':>7}")
    for name in names:
        lines.append(
            f"{name:<{width}}  {summary['classes'].get(name, 0):>7}  {summary['objects_per_class'].get(name, 0):>7}"
        )
    lines.append("")
    bpi = summary["boxes_per_image"]
    histogram = "  ".join(f"{k} box{'es' if k != '1' else ''}: {v}" for k, v in bpi["histogram"].items())
    lines.append(f"boxes per image   {histogram or '-'}   (mean {bpi['mean']}, max {bpi['max']})")
    if summary["box_size"]:
        q = summary["box_size"]
        lines.append(
            "box size          sqrt(box area / image area): " + "  ".join(f"{k} {v:.2f}" for k, v in q.items())
        )
    problems = summary["problems"]
    lines.append("")
    if problems:
        counts = ", ".join(f"{k} {v}" for k, v in summary["problem_counts"].items())
        lines.append(f"problems ({len(problems)}: {counts})")
        for p in problems:
            action = "left out" if p["skipped"] else "warning"
            lines.append(f"  [{action}] {p['kind']}: {p['file']}: {p['detail']}")
    else:
        lines.append("problems: none")
    lines.append("")
    if summary["usable"]:
        skipped = summary["images"] - summary["usable_images"]
        note = f" ({skipped} image{'s' if skipped != 1 else ''} will be skipped)" if skipped else ""
        lines.append(f"verdict: usable{note}")
    else:
        lines.append(f"verdict: NOT usable: {'; '.join(summary['reasons'])}")
    return "\n".join(lines)


def plot_overview(dataset: Dataset, path, per_class: int = 4, seed: int = 0) -> None:
    """A PNG to look at: a few images per class with all their boxes (the training target
    solid, the others dashed), and the spread of box sizes per class."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from clsloc.images import ImageError, decode_image

    classes = sorted({r.label for r in dataset.records})
    if not classes:
        raise ValueError("no usable images to plot")
    rng = np.random.default_rng(seed)
    columns = per_class + 1
    fig, axes = plt.subplots(len(classes), columns, figsize=(2.4 * columns, 2.4 * len(classes)), squeeze=False)
    for row, name in enumerate(classes):
        members = [r for r in dataset.records if r.label == name]
        picks = [members[i] for i in sorted(rng.choice(len(members), min(per_class, len(members)), replace=False))]
        for col in range(per_class):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(picks):
                continue
            record = picks[col]
            try:
                ax.imshow(decode_image(record.image))
            except ImageError:
                continue
            for obj in record.objects:
                x0, y0, x1, y1 = obj.box
                target = obj.box == record.box and obj.label == record.label
                ax.add_patch(
                    Rectangle(
                        (x0, y0),
                        x1 - x0,
                        y1 - y0,
                        fill=False,
                        linewidth=2 if target else 1,
                        linestyle="-" if target else "--",
                        edgecolor="lime" if target else "yellow",
                    )
                )
            ax.set_title(f"{name}: {record.image.name}", fontsize=7)
        sizes = [
            np.sqrt((o.box[2] - o.box[0]) * (o.box[3] - o.box[1]) / (r.width * r.height))
            for r in members
            for o in r.objects
            if o.label == name
        ]
        ax = axes[row, per_class]
        ax.hist(sizes, bins=np.linspace(0, 1, 11), color="tab:blue")
        ax.set_title(f"{name}: box size ({len(sizes)} boxes)", fontsize=7)
        ax.set_xlabel("sqrt(box area / image area)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
