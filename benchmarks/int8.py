"""int8 on real photos: k-fold acceptance by the export's own gate, and what each step of the recipe does.

    .venv/bin/python benchmarks/int8.py --folds-dir /tmp/int8-folds              # trains the folds there if absent
    .venv/bin/python benchmarks/int8.py --folds-dir /tmp/int8-folds --ablation --debug-fold 1

The folds are ``clsloc cv DATASETS --folds K --out DIR`` run directories (the
same folds as ``clsloc cv``); each fold's held-out images are its validation set.

1. Acceptance: every fold exported with ``clsloc export --int8`` (``export_run``,
   the real gate): fp32 and int8 accuracy and mean IoU, the drops, top-1
   agreement and box IoU to the fp32 box, accepted or refused.
2. ``--ablation``: the int8 recipe built up one step at a time from the one
   before this change, each step on every fold: mean and worst drop, agreement,
   box IoU to fp32, folds the gate would accept, and onnxruntime images/s
   against fp32 (batch 1 and 8, alternating rounds, serving's session options).
3. ``--debug-fold K``: fold K's per-layer table (``clsloc.training.int8.layer_report``)
   for the old recipe and the new one.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import add_json_flag, save  # noqa: E402 - benchmarks/results.py, beside this script

DATASETS = [str(REPO.parent / "shared" / "datasets" / name) for name in ("raccoon", "kangaroo")]


def fold_runs(folds_dir: Path, folds: int, datasets: list[str]) -> list[Path]:
    """The fold run directories, trained first (``clsloc cv --out``) when they are not there yet."""
    runs = [folds_dir / f"fold{k}" for k in range(1, folds + 1)]
    if not all((run / "best.pt").is_file() for run in runs):
        print(f"training {folds} folds into {folds_dir} (clsloc cv, default recipe) ...", flush=True)
        command = [sys.executable, "-m", "clsloc.cli", "cv", *datasets, "--folds", str(folds), "--out", str(folds_dir)]
        subprocess.run([*command, "--quiet"], check=True, cwd=REPO)
    return runs


# -- 1. acceptance -----------------------------------------------------------------------------------------


def acceptance(runs: list[Path], tmp: Path) -> list[dict]:
    from clsloc.manifest import Manifest
    from clsloc.training.export import ExportError, export_run

    rows = []
    for k, run in enumerate(runs, 1):
        out = tmp / f"accept{k}"
        start = time.perf_counter()
        try:
            export_run(run, out, int8=True, log=lambda *_: None)
        except ExportError as exc:
            if "int8 refused" not in str(exc):
                raise
        seconds = time.perf_counter() - start
        manifest = Manifest.load(out)
        fp, q, gate = manifest.metrics["onnx"], manifest.metrics["onnx_int8"], manifest.extra["int8"]["gate"]
        rows.append(
            {
                "fold": k,
                "n_val": fp["n"],
                "fp32": {m: fp[m] for m in ("accuracy", "mean_iou", "loc_accuracy")},
                "int8": {m: q[m] for m in ("accuracy", "mean_iou", "loc_accuracy")},
                "drops": gate["drops"],
                "agreement": gate["agreement"],
                "accepted": gate["accepted"],
                "precision": manifest.precision,
                "export_s": seconds,
            }
        )
        print(f"fold {k}: {'accepted' if gate['accepted'] else 'REFUSED'} ({seconds:.0f}s)", flush=True)
    return rows


def print_acceptance(rows: list[dict]) -> None:
    head = ("fold", "n", "fp32 acc", "int8 acc", "fp32 mIoU", "int8 mIoU", "top-1 agree", "box IoU to fp32", "accepted")
    lines = [head]
    for r in rows:
        a = r["agreement"]
        lines.append(
            (
                str(r["fold"]),
                str(r["n_val"]),
                f"{r['fp32']['accuracy']:.4f}",
                f"{r['int8']['accuracy']:.4f}",
                f"{r['fp32']['mean_iou']:.4f}",
                f"{r['int8']['mean_iou']:.4f}",
                f"{a['top1_agreement']:.4f}",
                f"{a['mean_box_iou_to_fp32']:.4f} (min {a['min_box_iou_to_fp32']:.3f})",
                "yes" if r["accepted"] else "NO",
            )
        )
    print(table(lines))
    print(f"accepted: {sum(r['accepted'] for r in rows)} of {len(rows)} folds")


# -- 2. ablation -------------------------------------------------------------------------------------------


def recipe_steps(alternatives: bool = False):
    """(name, Int8Options, calibration pick) from the recipe before this change to today's defaults,
    one change at a time; with ``alternatives``, also the defaults with one thing changed."""
    from clsloc.training.int8 import Int8Options

    defaults = Int8Options()
    before = Int8Options(
        calibration="minmax",
        views=1,
        reduce_range=True,
        quantize=("*",),
        keep_fp32=(),
        ops=("Conv", "Gemm", "MatMul"),
    )
    fused = replace(before, ops=defaults.ops)
    trunk = replace(fused, quantize=defaults.quantize)
    cpu = replace(trunk, reduce_range=defaults.reduce_range)
    views = replace(cpu, views=defaults.views)
    calibration = replace(views, calibration=defaults.calibration)
    steps = [
        ("before: first 64 training images, MinMax, 7-bit, all layers", before, "first"),
        ("+ activations folded into their convs", fused, "first"),
        ("+ images spread over the classes", fused, "spread"),
        ("+ only the backbone quantized (heads fp32)", trunk, "spread"),
        ("+ reduce_range from the CPU", cpu, "spread"),
        (f"+ {defaults.views} views per image (augmented)", views, "spread"),
        (f"+ {defaults.calibration} calibration", calibration, "spread"),
        ("+ stem and first block fp32 (defaults)", defaults, "spread"),
    ]
    if alternatives:
        steps += [
            ("defaults, entropy calibration", replace(defaults, calibration="entropy"), "spread"),
            (
                "defaults, last 1x1 conv fp32 too",
                replace(defaults, keep_fp32=(*defaults.keep_fp32, "model.bn2")),
                "spread",
            ),
        ]
    return steps


class Fold:
    """One fold's fp32 graph, validation inputs and fp32 outputs, made once for every recipe step."""

    def __init__(self, run: Path, tmp: Path):
        from clsloc.models import ExportWrapper
        from clsloc.preprocess import Preprocessing
        from clsloc.training import export
        from clsloc.training.checkpoint import load_run, load_split

        model, config = load_run(run)
        self.train, val = load_split(run)
        self.classes = list(config["classes"])
        self.preprocessing = Preprocessing.from_dict(config["preprocessing"])
        self.fp32 = export.export_onnx(ExportWrapper(model).eval(), tmp / "fp32.onnx", self.preprocessing.size)
        self.val, images = export.decode_all(val, log=lambda *_: None)
        self.inputs = np.concatenate(list(export.batches(self.preprocessing, images)))
        self.outputs = self.run(self.fp32)
        self.metrics = export.evaluate_outputs(self.val, self.classes, *self.outputs)

    def run(self, path: Path):
        from clsloc.training import export

        chunks = [self.inputs[i : i + 16] for i in range(0, len(self.inputs), 16)]
        return export.onnx_outputs(export.cpu_session(path), chunks)

    def quantize(self, options, pick: str, path: Path) -> dict:
        from clsloc.training import export, int8

        records = self.train[: options.images] if pick == "first" else self.train
        start = time.perf_counter()
        int8.quantize(self.fp32, path, int8.calibration_inputs(records, self.preprocessing, options), options)
        seconds = time.perf_counter() - start
        outputs = self.run(path)
        metrics = export.evaluate_outputs(self.val, self.classes, *outputs)
        gate = export.int8_gate(self.metrics, metrics, int8.agreement(*self.outputs, *outputs))
        return {**gate, "quantize_s": seconds}


def images_per_second(paths: dict[str, Path], rounds: int, seconds: float) -> dict[str, dict[int, float]]:
    """onnxruntime images/s of each graph at batch 1 and 8 with serving's options, in alternating rounds."""
    import onnxruntime as ort

    from clsloc.manifest import INPUT_NAME
    from clsloc.serving.engine import session_options

    sessions = {k: ort.InferenceSession(str(p), session_options(), ["CPUExecutionProvider"]) for k, p in paths.items()}
    shape = sessions[next(iter(sessions))].get_inputs()[0].shape[1:]
    got: dict[str, dict[int, list[float]]] = {k: {1: [], 8: []} for k in sessions}
    for _ in range(rounds):
        for size in (1, 8):
            x = np.random.default_rng(0).standard_normal((size, *shape)).astype(np.float32)
            for name, session in sessions.items():
                session.run(None, {INPUT_NAME: x})
                done, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    session.run(None, {INPUT_NAME: x})
                    done += size
                got[name][size].append(done / (time.perf_counter() - start))
    return {k: {b: statistics.median(v) for b, v in sizes.items()} for k, sizes in got.items()}


def ablation(runs: list[Path], tmp: Path, args) -> tuple[list[dict], dict]:
    steps = recipe_steps(args.alternatives)
    per_step: list[list[dict]] = [[] for _ in steps]
    graphs: dict[str, Path] = {}
    for k, run in enumerate(runs, 1):
        fold = Fold(run, tmp / f"ablation{k}")
        if k == 1:  # the speed of each step is timed on fold 1's graphs (the same network on every fold)
            graphs["fp32"] = fold.fp32
        for i, (name, options, pick) in enumerate(steps):
            path = tmp / f"ablation{k}" / f"step{i}.onnx"
            per_step[i].append(fold.quantize(options, pick, path))
            if k == 1:
                graphs[name] = path
        print(f"ablation: fold {k} done", flush=True)
    speed = {name: {1: float("nan"), 8: float("nan")} for name in graphs}
    if not args.no_speed:
        speed = images_per_second(graphs, args.rounds, args.seconds)
    rows = []
    for (name, options, _), results in zip(steps, per_step):
        rows.append(
            {
                "step": name,
                "options": asdict(options),
                "mean_drop": {m: statistics.mean(r["drops"][m] for r in results) for m in ("accuracy", "mean_iou")},
                "worst_drop": {m: max(r["drops"][m] for r in results) for m in ("accuracy", "mean_iou")},
                "top1_agreement": statistics.mean(r["agreement"]["top1_agreement"] for r in results),
                "box_iou_to_fp32": statistics.mean(r["agreement"]["mean_box_iou_to_fp32"] for r in results),
                "accepted": sum(r["accepted"] for r in results),
                "quantize_s": statistics.mean(r["quantize_s"] for r in results),
                "images_per_s": speed[name],
                "speedup": {b: speed[name][b] / speed["fp32"][b] for b in (1, 8)},
            }
        )
    return rows, speed["fp32"]


def print_ablation(rows: list[dict], fp32_speed: dict, folds: int) -> None:
    lines = [
        (
            "step",
            "acc drop mean/worst",
            "mIoU drop mean/worst",
            "top-1 agree",
            "box IoU to fp32",
            "accepted",
            "img/s b1 (x fp32)",
            "img/s b8 (x fp32)",
            "quantize s",
        )
    ]
    lines.append(("fp32", "", "", "", "", "", f"{fp32_speed[1]:.1f}", f"{fp32_speed[8]:.1f}", ""))
    for r in rows:
        lines.append(
            (
                r["step"],
                f"{r['mean_drop']['accuracy']:+.4f} / {r['worst_drop']['accuracy']:+.4f}",
                f"{r['mean_drop']['mean_iou']:+.4f} / {r['worst_drop']['mean_iou']:+.4f}",
                f"{r['top1_agreement']:.4f}",
                f"{r['box_iou_to_fp32']:.4f}",
                f"{r['accepted']}/{folds}",
                f"{r['images_per_s'][1]:.1f} ({r['speedup'][1]:.2f}x)",
                f"{r['images_per_s'][8]:.1f} ({r['speedup'][8]:.2f}x)",
                f"{r['quantize_s']:.0f}",
            )
        )
    print(table(lines))
    print("drops are fp32 minus int8 on each fold's held-out images (positive = int8 worse); the gate allows 0.01")


# -- 3. per-layer debug ------------------------------------------------------------------------------------


def layer_tables(run: Path, tmp: Path, worst: int) -> dict:
    from clsloc.training.int8 import format_layer_table, layer_report

    fold = Fold(run, tmp / "debug")
    steps = recipe_steps()
    out = {}
    for name, options, pick in (steps[0], steps[-1]):
        path = tmp / "debug" / f"{pick}-{options.calibration}.onnx"
        fold.quantize(options, pick, path)
        rows = layer_report(fold.fp32, path, fold.inputs)
        print(f"\nper-layer error, {name}:\n{format_layer_table(rows, worst)}")
        out[name] = [asdict(r) for r in rows]
    return out


def table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds-dir", required=True, type=Path, help="clsloc cv --out directory (trained if absent)")
    parser.add_argument("--folds", type=int, default=5, help="number of folds")
    parser.add_argument("--datasets", nargs="+", default=DATASETS, help="datasets to train the folds on, if absent")
    parser.add_argument("--ablation", action="store_true", help="also measure each step of the int8 recipe")
    parser.add_argument("--alternatives", action="store_true", help="ablation: also entropy calibration, stem fp32")
    parser.add_argument("--no-speed", action="store_true", help="ablation: accuracy only, no timing")
    parser.add_argument("--debug-fold", type=int, default=0, help="also print fold K's per-layer error tables")
    parser.add_argument("--worst", type=int, default=12, help="layers in the per-layer tables")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (ablation)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per timing window (ablation)")
    parser.add_argument("--skip-acceptance", action="store_true", help=argparse.SUPPRESS)
    add_json_flag(parser)
    args = parser.parse_args(argv)

    runs = fold_runs(args.folds_dir, args.folds, args.datasets)
    results: dict = {"folds_dir": str(args.folds_dir), "folds": len(runs)}
    with tempfile.TemporaryDirectory(prefix="clsloc-int8-") as tmp:
        tmp = Path(tmp)
        if not args.skip_acceptance:
            results["acceptance"] = rows = acceptance(runs, tmp)
            print()
            print_acceptance(rows)
        if args.ablation:
            results["ablation"], results["fp32_images_per_s"] = ablation(runs, tmp, args)
            print()
            print_ablation(results["ablation"], results["fp32_images_per_s"], len(runs))
        if args.debug_fold:
            results["layers"] = layer_tables(runs[args.debug_fold - 1], tmp, args.worst)
    if args.json:
        save("int8", results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
