"""The ONNX exporter before and after, side by side in one run: TorchScript vs ``torch.export``.

    .venv/bin/python benchmarks/exporter.py                  # the default network, pretrained trunk
    .venv/bin/python benchmarks/exporter.py --run runs/rk    # or a training run's best checkpoint

Baseline: the deprecated TorchScript exporter (``dynamo=False``) behind a
rewrite of every timm ``Conv2dSame`` into ``ZeroPad2d`` + ``Conv2d`` with the
pads fixed for the input size (what ``clsloc export`` did before). Ours:
``clsloc.training.export.export_onnx`` (``torch.export`` + onnxscript).

For each: seconds to export, file size, op counts in the file and after
onnxruntime's optimizations (Pad left?), parity with PyTorch on real photos
(max |logit diff|, min box IoU, the export gate's thresholds), and
onnxruntime images/s at batch 1 and 8 with the serving session options,
measured in alternating rounds (the machine is shared); medians and the ratio.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import add_json_flag, save  # noqa: E402 - benchmarks/results.py, beside this script

PHOTOS = [REPO.parent / "shared" / "datasets" / name / "images" for name in ("raccoon", "kangaroo")]


# -- the baseline: what clsloc export did before --------------------------------------------------------


def static_same_padding(module, input_size: tuple[int, int]):
    """A copy of ``module`` whose timm ``Conv2dSame`` layers pad by constants fixed for ``input_size``."""
    import copy

    import torch
    from timm.layers import Conv2dSame
    from timm.layers.padding import get_same_padding
    from torch import nn

    names = [name for name, m in module.named_modules() if isinstance(m, Conv2dSame)]
    module = copy.deepcopy(module)
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        module.get_submodule(name).register_forward_pre_hook(
            lambda _m, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:]))
        )
        for name in names
    ]
    with torch.no_grad():
        module(torch.zeros(1, 3, *input_size))
    for hook in hooks:
        hook.remove()
    for name in names:
        same = module.get_submodule(name)
        (ih, iw), (kh, kw), (sh, sw), (dh, dw) = sizes[name], same.kernel_size, same.stride, same.dilation
        pad_h, pad_w = get_same_padding(ih, kh, sh, dh), get_same_padding(iw, kw, sw, dw)
        conv = nn.Conv2d(
            same.in_channels,
            same.out_channels,
            same.kernel_size,
            same.stride,
            0,
            same.dilation,
            same.groups,
            same.bias is not None,
        )
        conv.load_state_dict(same.state_dict())
        pad = nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        module.set_submodule(name, nn.Sequential(pad, conv))
    return module.eval()


def torchscript_export(module, path: Path, input_size: tuple[int, int]) -> Path:
    import onnx
    import torch

    from clsloc.manifest import INPUT_NAME, OUTPUT_NAMES
    from clsloc.training.export import OPSET

    module = static_same_padding(module.eval(), input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(2, 3, *input_size),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=False)
    return path


# -- measuring -----------------------------------------------------------------------------------------------


def load_network(run: str | None):
    """(ExportWrapper, Preprocessing): a run's best checkpoint, or the default recipe's untrained network."""
    from clsloc.models import ExportWrapper
    from clsloc.preprocess import Preprocessing

    if run:
        from clsloc.training.checkpoint import load_run

        model, config = load_run(run)
        return ExportWrapper(model).eval(), Preprocessing.from_dict(config["preprocessing"])
    from clsloc.training.config import TrainConfig
    from clsloc.training.fit import model_for

    model = model_for(TrainConfig(), 2).eval()
    return ExportWrapper(model).eval(), model.preprocessing


def photo_batch(preprocessing, n: int) -> np.ndarray:
    from clsloc.images import ImageError, decode_image

    files = sorted(f for folder in PHOTOS if folder.is_dir() for f in folder.glob("*.jpg"))[::7][:n]
    images = []
    for f in files:
        try:
            images.append(decode_image(f))
        except ImageError:
            continue
    if not images:  # no shared photos: random pixels still exercise every op
        images = list(np.random.default_rng(0).integers(0, 255, (n, 300, 400, 3), dtype=np.uint8))
    return preprocessing.batch(images)


def op_counts(path: Path, tmp: Path) -> tuple[dict, dict]:
    """Op counts in the file, and after onnxruntime's load-time optimizations."""
    import onnx
    import onnxruntime as ort

    from clsloc.serving.engine import session_options

    options = session_options(1)
    options.optimized_model_filepath = str(tmp / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    counts = [
        dict(collections.Counter(n.op_type for n in onnx.load(str(p)).graph.node))
        for p in (path, Path(options.optimized_model_filepath))
    ]
    return counts[0], counts[1]


def parity_with_torch(wrapper, path: Path, batch: np.ndarray) -> dict:
    import onnxruntime as ort
    import torch

    from clsloc.training.export import onnx_outputs, parity, torch_outputs

    chunks = [batch[i : i + 8] for i in range(0, len(batch), 8)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    torch.set_num_threads(2)
    return parity(*torch_outputs(wrapper, chunks), *onnx_outputs(session, chunks))


def images_per_second(sessions: dict, batch: np.ndarray, size: int, seconds: float) -> dict:
    """One timed window per session at batch ``size``: images/s."""
    from clsloc.manifest import INPUT_NAME

    x = batch[:size]
    out = {}
    for name, session in sessions.items():
        session.run(None, {INPUT_NAME: x})
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(None, {INPUT_NAME: x})
            done += len(x)
        out[name] = done / (time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="training run to export (default: the default recipe's network, untrained heads)")
    parser.add_argument("--photos", type=int, default=48, help="photos for parity and timing")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per timing window")
    add_json_flag(parser)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from clsloc.serving.engine import session_options
    from clsloc.training.export import export_onnx

    wrapper, preprocessing = load_network(args.run)
    batch = photo_batch(preprocessing, args.photos)
    exporters = {"torchscript (before)": torchscript_export, "torch.export (now)": export_onnx}
    results: dict = {"network": args.run or "default recipe, untrained heads", "input": list(preprocessing.size)}
    rows, sessions = {}, {}
    with tempfile.TemporaryDirectory(prefix="clsloc-exporter-") as tmp:
        tmp = Path(tmp)
        for k, (name, export) in enumerate(exporters.items()):
            path = tmp / f"model{k}.onnx"
            start = time.perf_counter()
            export(wrapper, path, preprocessing.size)
            seconds = time.perf_counter() - start
            in_file, optimized = op_counts(path, tmp)
            rows[name] = {
                "export_s": seconds,
                "mb": path.stat().st_size / 2**20,
                "ops": in_file,
                "ops_after_onnxruntime": optimized,
                "parity": parity_with_torch(wrapper, path, batch),
            }
            sessions[name] = ort.InferenceSession(str(path), session_options(args.threads), ["CPUExecutionProvider"])
            print(f"{name}: exported in {seconds:.1f}s", flush=True)
        for size in (1, 8):
            rounds = [images_per_second(sessions, batch, size, args.seconds) for _ in range(args.rounds)]
            for name in exporters:
                rows[name][f"images_per_s_b{size}"] = statistics.median(r[name] for r in rounds)
    results["exporters"] = rows
    print_table(rows)
    if args.json:
        save("exporter", results, args)
    return 0


def print_table(rows: dict) -> None:
    before, now = rows.values()
    lines = [("measure", *rows, "ratio")]
    lines.append(("export seconds", *(f"{r['export_s']:.1f}" for r in rows.values()), ""))
    lines.append(("file MB", *(f"{r['mb']:.2f}" for r in rows.values()), ""))
    for key in ("Pad", "Shape", "Conv"):
        lines.append(
            (f"{key} ops (file / after onnxruntime)",)
            + tuple(f"{r['ops'].get(key, 0)} / {r['ops_after_onnxruntime'].get(key, 0)}" for r in rows.values())
            + ("",)
        )
    lines.append(("nodes in file", *(str(sum(r["ops"].values())) for r in rows.values()), ""))
    lines.append(("parity max |logit diff|", *(f"{r['parity']['max_abs_logit_diff']:.2e}" for r in rows.values()), ""))
    lines.append(("parity min box IoU", *(f"{r['parity']['min_box_iou']:.6f}" for r in rows.values()), ""))
    lines.append(("parity passed", *(str(r["parity"]["passed"]) for r in rows.values()), ""))
    for size in (1, 8):
        key = f"images_per_s_b{size}"
        lines.append(
            (
                f"onnxruntime img/s, batch {size}",
                f"{before[key]:.1f}",
                f"{now[key]:.1f}",
                f"{now[key] / before[key]:.2f}x",
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    print("\n" + "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines))


if __name__ == "__main__":
    sys.exit(main())
