"""Every training option, once: a dataclass whose fields generate the command-line flags.

``clsloc train``, ``clsloc cv`` and ``clsloc tune`` share these options. Each
field of :class:`TrainConfig` is one flag (``batch_size`` -> ``--batch-size``;
an on/off field -> ``--name`` / ``--no-name``), its ``help`` the flag's help
text, its default the default. A recipe file (``--config recipe.yaml``, the
same names as keys) sets any of them; flags given on the command line
override the file.

Every run writes ``RUN_DIR/config.yaml`` (these options as resolved: run
``clsloc train --config RUN_DIR/config.yaml --out NEW_DIR`` to repeat it) and
``RUN_DIR/config.json`` (the same plus what the run found out: classes,
preprocessing, data fingerprint, final metrics), which is what
``clsloc.training.checkpoint.load_run`` rebuilds the model from.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import yaml

OPTIMIZERS = ("adamw", "sgd")
BOX_LOSSES = ("mse", "smooth_l1", "giou")
LR_SCHEDULES = ("cosine", "step", "none")
MONITORS = ("mean_iou", "loc_accuracy", "accuracy", "loss")
POLICIES = ("largest", "first", "skip")
BOX_TARGETS = ("nearest", "policy")
GROUPS = ("data", "model", "schedule", "runtime")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default where it says something: not for switches (their name says it), nor
    where the help already does (the training options write their own, on/off included)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.nargs == 0 or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def option(default, help: str, group: str, *, choices=None, metavar: str | None = None, flag: str | None = None):
    """A TrainConfig field and the flag it becomes."""
    meta = {"help": help, "group": group, "choices": choices, "metavar": metavar, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # -- data
    datasets: list[str] = option([], "dataset folders/files (VOC, COCO, YOLO, CSV)", "data")
    val: list[str] = option(
        [], "explicit validation datasets (default: hold out --val-split of the datasets)", "data", metavar="DATASET"
    )
    val_split: float = option(0.2, "stratified hold-out fraction", "data")
    policy: str = option("largest", "training target in multi-object images", "data", choices=POLICIES)
    box_target: str = option(
        "policy",
        "the box the box loss is taken against in images with several boxes of the class: nearest = the "
        "one nearest the prediction (evaluation scores the best-matching box), policy = --policy's",
        "data",
        choices=BOX_TARGETS,
    )
    seed: int = option(0, "seed of the split, the initialization and every epoch's random draws", "data")
    # -- model
    backbone: str = option("efficientnet_lite0", "efficientnet_lite0/1/2 or a torchvision classifier", "model")
    pretrained: bool = option(True, "ImageNet weights (off: random weights, for tests)", "model")
    attach: str = option(
        "map",
        "where the box head attaches: the spatial feature map or pooled features",
        "model",
        choices=("map", "pooled"),
    )
    per_class: bool = option(False, "one box per class (C x 4) instead of one class-agnostic box", "model")
    dropout: float = option(0.2, "dropout before both heads", "model")
    image_size: int = option(256, "input side in pixels, 0 = the backbone's own (224 for Lite0)", "model")
    box_bins: int = option(
        16, "0: sigmoid box head; N: each box corner is the expectation of a softmax over N positions", "model"
    )
    tta: bool = option(
        True,
        "predict on the image and its mirror and average both (the final report, export and serving; "
        "per-epoch validation runs the plain model, at half the cost)",
        "model",
    )
    refine_context: float = option(
        1.25,
        "refining pass: look again at a square window of this many times the first box's longer side "
        "around it and regress the box there (0 = one pass; the final report, export and serving; "
        "it doubles the cost of a prediction)",
        "model",
    )
    # -- schedule
    epochs: int = option(
        16, "stage 1 epochs: heads on the frozen backbone, over --cache-views views of each image", "schedule"
    )
    lr: float = option(1e-3, "stage 1 learning rate", "schedule")
    finetune_epochs: int = option(
        16, "stage 2 epochs: fine-tune the top --finetune-depth of the backbone with the heads, 0 = none", "schedule"
    )
    finetune_lr: float = option(3e-4, "stage 2 learning rate", "schedule")
    finetune_depth: float = option(
        0.5, "fraction of the backbone, from the top, that stage 2 trains (the rest stays frozen)", "schedule"
    )
    finetune_depthwise: bool = option(
        False,
        "stage 2 also trains the depthwise convolutions' filters (off: kept as pretrained; on a CPU their "
        "gradient costs more than all their parameters are worth)",
        "schedule",
    )
    finetune_norm: bool = option(
        False, "stage 2 also trains BatchNorm's scale and shift (off: kept as pretrained)", "schedule"
    )
    freeze_bn: bool = option(
        True,
        "stage 2 keeps the backbone's BatchNorm statistics (off: updates them; small batches make them noisy)",
        "schedule",
    )
    batch_size: int = option(32, "images per step", "schedule")
    optimizer: str = option("adamw", "optimizer", "schedule", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD momentum", "schedule")
    weight_decay: float = option(1e-4, "weight decay", "schedule")
    lr_schedule: str = option("cosine", "learning-rate decay within each stage", "schedule", choices=LR_SCHEDULES)
    box_loss: str = option("mse", "box loss: mse is the lecture's L2", "schedule", choices=BOX_LOSSES)
    box_weight: float = option(20.0, "lambda in CE + lambda * box loss", "schedule")
    augment: bool = option(True, "flips / crops / zoom-out / colour in stage 2", "schedule")
    crop_p: float = option(
        0.5, "probability of an object-keeping crop (stage 2 and the augmented cached views)", "schedule"
    )
    crop_scale: float = option(0.7, "smallest crop side / image side", "schedule")
    zoom_out_p: float = option(
        0.5, "stage 2: probability of placing the image on a larger grey canvas (makes objects smaller)", "schedule"
    )
    zoom_out_max: float = option(2.0, "largest canvas side / image side", "schedule")
    context_crop_p: float = option(
        0.0,
        "probability of cropping, instead, the window a refining pass looks at (--refine-context x the box, "
        "around the box moved and scaled as a first pass might find it): stage 2 and the augmented cached views",
        "schedule",
    )
    cache_views: int = option(
        8,
        "stage 1: cached feature views per training image (1 as is, 2 + mirror, more + augmented copies); "
        "with --finetune-cache stage 2 draws one of them per image each epoch",
        "schedule",
    )
    finetune_cache: bool = option(
        False,
        "stage 2 runs only the trained top on the frozen bottom's cached output, one of the --cache-views views "
        "per image each epoch, instead of the whole network on freshly augmented images (faster, less accurate)",
        "schedule",
    )
    patience: int = option(10, "early stopping: epochs without improvement of --monitor, 0 = off", "schedule")
    monitor: str = option("mean_iou", "validation metric for early stopping and best.pt", "schedule", choices=MONITORS)
    # -- runtime
    device: str = option("auto", "where to train", "runtime", choices=("auto", "cpu", "cuda"))
    amp: bool = option(True, "mixed precision on CUDA (ignored on a CPU)", "runtime")
    workers: int = option(0, "DataLoader worker processes for the augmented stage", "runtime")
    threads: int = option(0, "torch CPU threads (0 = torch's default)", "runtime")

    def validate(self) -> None:
        """Raise ValueError naming the bad option; called before any work starts."""
        checks = [
            (self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, OPTIMIZERS),
            (self.box_loss in BOX_LOSSES, "box_loss", self.box_loss, BOX_LOSSES),
            (self.lr_schedule in LR_SCHEDULES, "lr_schedule", self.lr_schedule, LR_SCHEDULES),
            (self.monitor in MONITORS, "monitor", self.monitor, MONITORS),
            (self.attach in ("map", "pooled"), "attach", self.attach, ("map", "pooled")),
            (self.policy in ("largest", "first", "skip"), "policy", self.policy, ("largest", "first", "skip")),
            (self.box_target in BOX_TARGETS, "box_target", self.box_target, BOX_TARGETS),
        ]
        for ok, name, value, known in checks:
            if not ok:
                raise ValueError(f"option {name}={value!r} is not one of {list(known)}")
        if not 0.0 < self.val_split < 1.0 and not self.val:
            raise ValueError(f"option val_split={self.val_split} must be in (0, 1) when no --val is given")
        if not 0.0 < self.finetune_depth <= 1.0:
            raise ValueError(f"option finetune_depth={self.finetune_depth} must be in (0, 1]")
        if self.cache_views < 1:
            raise ValueError(f"option cache_views={self.cache_views} must be >= 1")
        for name in ("epochs", "finetune_epochs", "patience", "workers", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"option {name}={getattr(self, name)} must be >= 0")
        if self.batch_size < 1:
            raise ValueError(f"option batch_size={self.batch_size} must be >= 1")
        for name in ("lr", "finetune_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"option {name}={getattr(self, name)} must be > 0")
        if not 0.0 <= self.zoom_out_p <= 1.0 or self.zoom_out_max < 1.0:
            raise ValueError(
                f"option zoom_out_p={self.zoom_out_p} must be in [0, 1], zoom_out_max={self.zoom_out_max} >= 1"
            )
        if self.box_bins < 0 or self.box_bins == 1:
            raise ValueError(f"option box_bins={self.box_bins} must be 0 (sigmoid head) or >= 2")
        if not 0.0 <= self.context_crop_p <= 1.0:
            raise ValueError(f"option context_crop_p={self.context_crop_p} must be in [0, 1]")
        if self.refine_context and self.refine_context < 1.0:
            raise ValueError(f"option refine_context={self.refine_context} must be 0 (off) or >= 1")
        if self.weight_decay < 0 or self.box_weight < 0 or not 0 <= self.dropout < 1:
            raise ValueError("weight_decay and box_weight must be >= 0, dropout in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    def loss_options(self) -> dict:
        """The box loss's keyword arguments (``clsloc.training.engine``: compute_loss, train_one_epoch, evaluate)."""
        return {"box_kind": self.box_loss, "box_weight": self.box_weight, "box_target": self.box_target}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        # Runs written before these options trained everything in the top: resume them as they began.
        before = {"finetune_depthwise": True, "finetune_norm": True}
        return cls(**{**before, **{k: v for k, v in d.items() if k in known}})


def _default(f) -> object:
    return f.default_factory() if f.default is MISSING else f.default


def _flag(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_train_arguments(parser: argparse.ArgumentParser, *, datasets: bool = True) -> None:
    """The flags shared by train, cv and tune, one per TrainConfig field, plus ``--config``.

    Flags not given stay out of the parsed namespace (their default is
    ``SUPPRESS``), so :func:`config_from_args` can tell a flag from a default
    and let flags override the recipe file.
    """
    if datasets:
        parser.add_argument(
            "datasets", nargs="*", metavar="DATASET", help=TrainConfig.__dataclass_fields__["datasets"].metadata["help"]
        )
    parser.add_argument(
        "--config",
        metavar="RECIPE.yaml",
        help="training options from a YAML file (the names of the flags below, with _ or -); flags override it. "
        "Every run writes the resolved RUN_DIR/config.yaml",
    )
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for f in fields(TrainConfig):
        if f.name == "datasets":
            continue
        default, meta = _default(f), f.metadata
        kwargs: dict = dict(dest=f.name, default=argparse.SUPPRESS)
        if isinstance(default, bool):
            on_off = "on" if default else "off"
            kwargs.update(action=argparse.BooleanOptionalAction, help=f"{meta['help']} (default: {on_off})")
        elif isinstance(default, list):
            kwargs.update(nargs="+", metavar=meta["metavar"], help=meta["help"])
        else:
            kwargs.update(type=type(default), choices=meta["choices"], metavar=meta["metavar"])
            kwargs["help"] = f"{meta['help']} (default: {default})"
        groups[meta["group"]].add_argument(_flag(f), **kwargs)


def load_recipe(path: str | Path) -> dict:
    """A recipe file's options, checked: unknown names and values of the wrong type are errors naming them."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ValueError(f"--config {path}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"--config {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}")
    by_name = {f.name: f for f in fields(TrainConfig)}
    options = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in by_name:
            raise ValueError(f"--config {path}: unknown option {key!r} (known: {', '.join(sorted(by_name))})")
        options[name] = _coerce(value, _default(by_name[name]), f"--config {path}: option {key!r}")
    return options


def _coerce(value, default, where: str):
    """``value`` as the type of ``default`` (YAML reads 1e-3 as text, 16 as an int where a float is meant)."""
    if isinstance(default, list):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [str(v) for v in value]
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    try:
        return type(default)(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected {type(default).__name__}, got {value!r}") from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig's defaults, then the recipe file (``--config``), then the flags given; validated."""
    given = vars(args)
    values = load_recipe(given["config"]) if given.get("config") else {}
    for f in fields(TrainConfig):
        if f.name in given and not (f.name == "datasets" and not given[f.name]):  # no DATASET: the recipe's
            values[f.name] = given[f.name]
    if not values.get("datasets"):
        raise ValueError("give at least one DATASET (or a --config recipe that lists datasets)")
    config = TrainConfig(**values)
    config.datasets = [str(p) for p in config.datasets]
    config.val = [str(p) for p in (config.val or [])]
    config.validate()
    return config


def write_recipe(path: str | Path, config: TrainConfig) -> None:
    """``config`` as a recipe file that ``--config`` reads back into the same options."""
    path = Path(path)
    header = "# clsloc training options as this run resolved them; repeat with: clsloc train --config THIS --out DIR\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(header + yaml.safe_dump(config.to_dict(), sort_keys=False))
    tmp.replace(path)


def write_json(path: str | Path, data) -> None:
    """Write JSON atomically, so a killed run never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
