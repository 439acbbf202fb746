"""Provider choice: CUDA where the container has an NVIDIA device (docker run --gpus all), CPU otherwise.

This machine has no GPU: onnxruntime's session is replaced by one that records
what it was asked for, and the device check is set by the test.
"""

from __future__ import annotations

import onnxruntime
import pytest

from clsloc.serving import engine
from clsloc.serving.engine import CPU, CUDA, create_session


class RecordingSession:
    requested: list[list[str]] = []

    def __init__(self, path, sess_options=None, providers=None):
        RecordingSession.requested.append(list(providers))
        self.providers = list(providers)

    def get_providers(self):
        return self.providers


@pytest.fixture
def onnxruntime_gpu(monkeypatch):
    """onnxruntime-gpu as installed in the image: the CUDA provider offered, its libraries preloadable."""
    RecordingSession.requested = []
    preloaded = []
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(onnxruntime, "InferenceSession", RecordingSession)
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: preloaded.append(True), raising=False)
    monkeypatch.delenv("CLSLOC_REQUIRE_GPU", raising=False)
    return preloaded


@pytest.mark.parametrize("device", [True, False], ids=["nvidia-device", "no-device"])
def test_cuda_is_chosen_exactly_when_an_nvidia_device_is_there(onnxruntime_gpu, monkeypatch, device, tmp_path):
    monkeypatch.setattr(engine, "_gpu_device_present", lambda: device)
    session = create_session(tmp_path / "model.onnx", threads=1)
    assert RecordingSession.requested == [[CUDA, CPU] if device else [CPU]]
    assert session.get_providers()[0] == (CUDA if device else CPU)
    assert onnxruntime_gpu == ([True] if device else [])  # the nvidia-* wheels' libraries, loaded first


def test_the_start_up_check_never_touches_the_gpu(onnxruntime_gpu, monkeypatch, tmp_path):
    monkeypatch.setattr(engine, "_gpu_device_present", lambda: True)
    monkeypatch.setenv("CLSLOC_REQUIRE_GPU", "1")
    create_session(tmp_path / "model.onnx", threads=1, cpu_only=True)
    assert RecordingSession.requested == [[CPU]] and onnxruntime_gpu == []


def test_the_device_check_looks_for_the_nodes_docker_gpus_creates(monkeypatch):
    seen = []
    monkeypatch.setattr(engine.os.path, "exists", lambda path: seen.append(path) or path == "/dev/nvidiactl")
    assert engine._gpu_device_present()
    assert "/dev/nvidiactl" in seen
