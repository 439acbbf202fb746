"""Pictures of a run: loss curves, and train/val accuracy and IoU curves (PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt


def _x(history: list[dict]) -> list[int]:
    return list(range(1, len(history) + 1))


def _stage_boundary(ax, history: list[dict]) -> None:
    for i in range(1, len(history)):
        if history[i]["stage"] != history[i - 1]["stage"]:
            ax.axvline(i + 0.5, color="grey", linestyle=":", linewidth=1)
            ax.text(i + 0.6, ax.get_ylim()[1], " fine-tune", va="top", fontsize=8, color="grey")


def plot_history(history: list[dict], out_dir: str | Path) -> list[Path]:
    """Write loss.png and accuracy_iou.png into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    if not history:
        return []
    x = _x(history)
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [h["train_loss"] for h in history], label="train loss")
    ax.plot(x, [h["val_loss"] for h in history], label="val loss")
    ax.plot(x, [h["train_box_loss"] for h in history], label="train box loss", linestyle="--", alpha=0.6)
    ax.set_xlabel("epoch (both stages)")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    _stage_boundary(ax, history)
    ax.set_title("loss")
    fig.tight_layout()
    paths.append(out_dir / "loss.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "accuracy", "classification accuracy"), (axes[1], "mean_iou", "mean IoU")):
        ax.plot(x, [h[f"train_{key}"] for h in history], label="train")
        ax.plot(x, [h[f"val_{key}"] for h in history], label="val")
        if key == "mean_iou":
            ax.plot(x, [h["val_loc_accuracy"] for h in history], label="val loc accuracy (IoU>=0.5)", linestyle="--")
        ax.set_xlabel("epoch (both stages)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        ax.set_title(title)
        _stage_boundary(ax, history)
    fig.suptitle("train vs val (a big gap = overfitting)")
    fig.tight_layout()
    paths.append(out_dir / "accuracy_iou.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
