"""The ``clsloc`` command: one entry point, one module per subcommand.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``. Only the module of the command being run is imported, so
``clsloc serve`` and ``clsloc data ...`` never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("clsloc.data_cli", "check a dataset, or write a synthetic one"),
    "train": ("clsloc.training.train", "fine-tune a pretrained classifier with a box regression head"),
    "tune": ("clsloc.training.tune", "random search in log space over learning rate and regularization"),
    "cv": ("clsloc.training.cv", "k-fold cross-validation of the training recipe"),
    "export": ("clsloc.training.export", "export a training run to ONNX + manifest, parity-checked"),
    "serve": ("clsloc.serving.cli", "serve a model over HTTP (BentoML + onnxruntime)"),
    "score": ("clsloc.serving.scoring.score_cli", "score images in batch: one row per image (local or Ray)"),
    "evaluate": ("clsloc.serving.scoring.evaluate_cli", "metrics of a model on labelled datasets, and an HTML report"),
}


def _top_level_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clsloc",
        description="Classification + localization: what the main object in an image is, and where.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items())
        + "\n\nRun 'clsloc COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"clsloc {_version()}")
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
    return parser


def _version() -> str:
    from clsloc import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_level_parser()
    if not argv or argv[0] not in COMMANDS:
        top.parse_args(argv[:1])  # handles --help / --version / unknown command
        top.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"clsloc {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
