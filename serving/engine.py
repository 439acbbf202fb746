"""The inference engine: image -> label, score and box, with onnxruntime only.

One plain-Python module used by the HTTP service, batch scoring, the
benchmark and the tests, so every path runs the same steps:

    decode (clsloc.images) -> preprocess (from the manifest) -> onnxruntime
    -> softmax -> box in pixels of the image as displayed (clsloc.boxes)

No torch here (a test enforces it): serving installs without it.

The engine refuses to start when the artifact cannot be trusted: a file that
is not ONNX, or a graph whose input/outputs disagree with its manifest
(names, class count vs logits width, input size vs preprocessing size).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clsloc.boxes import to_api_box
from clsloc.images import DEFAULT_MAX_PIXELS, ImageError, decode_image, open_image
from clsloc.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, ManifestError
from clsloc.serving.env import env_flag, env_int

log = logging.getLogger("clsloc.engine")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Default upload limit (bytes); the service makes it configurable.
DEFAULT_MAX_BYTES = 20 * 1024 * 1024


class EngineError(RuntimeError):
    """The model cannot be served (bad artifact, manifest/graph mismatch, missing GPU)."""


@dataclass
class Prediction:
    label: str
    score: float
    box: dict  # {"x", "y", "w", "h"} pixels of the image as displayed, top-left corner
    width: int
    height: int

    def to_dict(self) -> dict:
        return {"label": self.label, "score": self.score, "box": self.box, "width": self.width, "height": self.height}


def require_gpu_from_env() -> bool:
    return env_flag(os.environ, "CLSLOC_REQUIRE_GPU", False)


def _gpu_device_present() -> bool:
    # onnxruntime-gpu lists the CUDA provider even on machines without a GPU and
    # then prints a loud load error before falling back; only try it where an
    # NVIDIA device exists.
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


# Images per onnxruntime run unless told otherwise. On a CPU a larger batch buys no speed per image (the
# convolutions already fill the cores) while every image of a run holds its activations in memory, and
# onnxruntime's arena keeps the largest run's for good; a GPU needs large batches to be kept busy.
CPU_BATCH = 4
GPU_BATCH = 32


def default_batch_size(providers: Sequence[str]) -> int:
    """Images per run for a session whose providers in use are ``providers`` (CUDA first on a GPU)."""
    return GPU_BATCH if providers and providers[0] == CUDA else CPU_BATCH


def default_threads() -> int:
    """Threads per worker: env ``CLSLOC_THREADS``, else the CPUs this process may use."""
    if threads := env_int(os.environ, "CLSLOC_THREADS", 0):
        return threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn the cores that decoding and the HTTP server need, which on a small
    # machine costs more end-to-end throughput than spinning saves.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # onnxruntime's CPU arena keeps the memory of the largest batch it has run for the life of the
    # process, which the service bounds by never running more than CLSLOC_MAX_BATCH images at once.
    # Without the arena every run allocates (and page-faults) its buffers afresh: less memory, slower
    # runs (benchmarks/memory.py measures both).
    options.enable_cpu_mem_arena = env_flag(os.environ, "CLSLOC_ORT_ARENA", True)
    # Memory patterns are planned per input shape, and each shape's plan keeps its own block in the
    # arena. The service and batch scoring run every batch size up to their bound, so with patterns the
    # arena holds a block per size; without them the arena reuses its chunks across sizes.
    options.enable_mem_pattern = env_flag(os.environ, "CLSLOC_ORT_MEM_PATTERN", False)
    return options


def create_session(
    model_path: str | Path, *, threads: int | None = None, require_gpu: bool | None = None, cpu_only: bool = False
):
    """An onnxruntime session: CUDA when a GPU is there, else CPU; providers in use logged.

    ``cpu_only`` checks an artifact without touching the GPU (the serving process's
    start-up check: a CUDA context made there would hold GPU memory for good).
    """
    import onnxruntime as ort

    model_path = Path(model_path)
    require_gpu = False if cpu_only else (require_gpu_from_env() if require_gpu is None else require_gpu)
    available = ort.get_available_providers()
    wanted = [CPU]
    if not cpu_only and CUDA in available and (_gpu_device_present() or require_gpu):
        if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from the nvidia-* wheels, when installed
            try:
                ort.preload_dlls()
            except Exception as exc:
                log.debug("onnxruntime.preload_dlls failed: %s", exc)
        wanted = [CUDA, CPU]
    elif require_gpu:
        raise EngineError(f"CLSLOC_REQUIRE_GPU is set but onnxruntime offers no CUDA provider (available: {available})")
    try:
        session = ort.InferenceSession(str(model_path), sess_options=session_options(threads), providers=wanted)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/InvalidGraph classes
        raise EngineError(f"{model_path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from None
    in_use = session.get_providers()
    # onnxruntime falls back to CPU silently when CUDA cannot load: say what is really used.
    fell_back = in_use[0] != wanted[0]
    (log.warning if fell_back else log.debug if cpu_only else log.info)(
        "onnxruntime %s: providers in use %s (requested %s)%s",
        ort.__version__,
        in_use,
        wanted,
        " -- CUDA did not load, running on CPU" if fell_back else "",
    )
    if require_gpu and CUDA not in in_use:
        raise EngineError(f"CLSLOC_REQUIRE_GPU is set but the CUDA provider did not load (in use: {in_use})")
    return session


def check_graph(session, manifest: Manifest, source: str) -> None:
    """Refuse a graph that disagrees with its manifest (the graph contract in clsloc.manifest)."""
    inputs = session.get_inputs()
    outputs = {o.name: o for o in session.get_outputs()}
    problems = []
    if len(inputs) != 1 or inputs[0].name != manifest.input_name:
        problems.append(f"inputs are {[i.name for i in inputs]}, manifest says one input {manifest.input_name!r}")
    else:
        shape = inputs[0].shape
        want_h, want_w = manifest.preprocessing.size
        if inputs[0].type != "tensor(float)":
            problems.append(f"input {inputs[0].name!r} is {inputs[0].type}, expected tensor(float)")
        if len(shape) != 4:
            problems.append(f"input {inputs[0].name!r} has shape {shape}, expected (N, 3, H, W)")
        else:
            for axis, want, what in ((1, 3, "channels"), (2, want_h, "height"), (3, want_w, "width")):
                if isinstance(shape[axis], int) and shape[axis] != want:
                    problems.append(
                        f"input {what} is {shape[axis]} in the graph but {want} in the manifest (shape {shape})"
                    )
    logits_name, boxes_name = manifest.output_names
    for name in (logits_name, boxes_name):
        if name not in outputs:
            problems.append(f"output {name!r} named in the manifest is not in the graph (outputs: {list(outputs)})")
    if logits_name in outputs:
        width = outputs[logits_name].shape[-1] if outputs[logits_name].shape else None
        if isinstance(width, int) and width != len(manifest.classes):
            problems.append(
                f"output {logits_name!r} has {width} columns but the manifest lists {len(manifest.classes)} classes"
            )
    if boxes_name in outputs:
        shape = outputs[boxes_name].shape
        if len(shape) != 2 or (isinstance(shape[-1], int) and shape[-1] != 4):
            problems.append(f"output {boxes_name!r} has shape {shape}, expected (N, 4)")
    if problems:
        raise EngineError(f"{source}: manifest and graph disagree: " + "; ".join(problems))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Engine:
    """A loaded model: ``predict`` one image, ``predict_many`` several (one bad image never costs the others)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        threads: int | None = None,
        require_gpu: bool | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        cpu_only: bool = False,
    ):
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise EngineError(f"{model_dir}: not a model directory (expected {MODEL_FILE} and {MANIFEST_FILE})")
        try:
            self.manifest = Manifest.load(model_dir)
        except ManifestError as exc:
            raise EngineError(str(exc)) from None
        model_path = model_dir / MODEL_FILE
        if not model_path.is_file():
            raise EngineError(f"{model_path}: missing (an exported model directory holds {MODEL_FILE})")
        self.model_dir = model_dir
        self.session = create_session(model_path, threads=threads, require_gpu=require_gpu, cpu_only=cpu_only)
        check_graph(self.session, self.manifest, str(model_path))
        self.providers = self.session.get_providers()
        self.preprocessing = self.manifest.preprocessing
        self.classes = list(self.manifest.classes)
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self._output_names = list(self.manifest.output_names)

    # -- steps ------------------------------------------------------------------
    def decode(self, source, *, name: str | None = None) -> np.ndarray:
        """Bytes / path / file -> RGB as displayed; raises clsloc.images.ImageError."""
        return decode_image(source, name=name, max_pixels=self.max_pixels, max_bytes=self.max_bytes)

    def open(self, source, *, name: str | None = None):
        """Like ``decode`` but -> an RGB Pillow image: the one-image hot path resizes it without array copies."""
        return open_image(source, name=name, max_pixels=self.max_pixels, max_bytes=self.max_bytes)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed float32 (N, 3, H, W) -> (probabilities (N, C), boxes (N, 4) normalized xyxy)."""
        logits, boxes = self.session.run(self._output_names, {self.manifest.input_name: batch})
        return softmax(logits.astype(np.float64)), boxes

    def predict_arrays(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Decoded RGB images (any sizes) -> predictions, in one onnxruntime call."""
        if not images:
            return []
        probs, boxes = self.run(self.preprocessing.batch(list(images)))
        return [
            self.prediction(p, box, int(rgb.shape[1]), int(rgb.shape[0])) for rgb, p, box in zip(images, probs, boxes)
        ]

    def prediction(self, probs: np.ndarray, box: np.ndarray, width: int, height: int) -> Prediction:
        """One row of ``run``'s output -> Prediction, box in pixels of the (width x height) image."""
        k = int(np.argmax(probs))
        return Prediction(self.classes[k], float(probs[k]), to_api_box(box, width, height), width, height)

    # -- the API ---------------------------------------------------------------
    def predict(self, source, *, name: str | None = None) -> Prediction:
        """One image (bytes, path or binary file) -> Prediction; raises ImageError for bad input."""
        return self.predict_arrays([self.decode(source, name=name)])[0]

    def predict_many(
        self, sources: Iterable, *, names: Sequence[str | None] | None = None, batch_size: int = 16
    ) -> list[Prediction | ImageError]:
        """Several images -> one result each, in order: a Prediction, or the ImageError of that image."""
        sources = list(sources)
        names = list(names) if names is not None else [None] * len(sources)
        results: list[Prediction | ImageError | None] = [None] * len(sources)
        pending: list[tuple[int, np.ndarray, int, int]] = []  # index, image at the input size, displayed size

        def flush() -> None:
            if pending:
                probs, boxes = self.run(self.preprocessing.normalize(np.stack([small for _, small, _, _ in pending])))
                for (i, _, width, height), p, box in zip(pending, probs, boxes):
                    results[i] = self.prediction(p, box, width, height)
            pending.clear()

        for i, (source, name) in enumerate(zip(sources, names)):
            try:
                image = self.open(source, name=name)
            except ImageError as exc:
                results[i] = exc
                continue
            # Only the input-sized copy waits for the batch: a batch of full-size photos (up to
            # max_pixels each) would otherwise sit in memory together.
            pending.append((i, self.preprocessing.resize_image(image), image.width, image.height))
            image.close()
            if len(pending) >= batch_size:
                flush()
        flush()
        return results  # type: ignore[return-value]

    @property
    def model_ref(self) -> dict:
        return {"name": self.manifest.name, "version": self.manifest.version}

    def describe(self) -> dict:
        """The manifest as served by GET /model, plus what the engine actually runs on."""
        return {**self.manifest.to_dict(), "providers": list(self.providers)}
