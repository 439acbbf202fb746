"""Service settings, read once from the environment (``clsloc serve`` sets them).

=========================  ==================================================  =========
variable                   meaning                                             default
=========================  ==================================================  =========
CLSLOC_MODEL               model directory, or a pinned store tag NAME:VERSION  a Bento's packed model
CLSLOC_MAX_BYTES           largest accepted image, bytes                        20 MB
CLSLOC_MAX_PIXELS          largest accepted image, width x height               64 MP
CLSLOC_MAX_BATCH_IMAGES    most images in one /predict_batch request            64
CLSLOC_MAX_BATCH           most images in one onnxruntime run (both routes)    4 (GPU 32)
CLSLOC_MAX_QUEUE           most API requests a worker holds at once; more: 503  32
CLSLOC_API_KEY             when set, requests need ``Authorization: Bearer``    unset
CLSLOC_THREADS             onnxruntime intra-op threads per worker              CPUs
CLSLOC_WORKERS             BentoML worker processes                             1
CLSLOC_REQUIRE_GPU         1: refuse to start without the CUDA provider         unset
CLSLOC_ACCESS_LOG          0: no log line per request (health probes never)     1
CLSLOC_ORT_ARENA           0: no onnxruntime CPU arena (less memory, slower)    1
CLSLOC_ORT_MEM_PATTERN     1: onnxruntime memory patterns (a block per shape)   0
=========================  ==================================================  =========
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from clsloc.images import DEFAULT_MAX_PIXELS
from clsloc.serving.engine import DEFAULT_MAX_BYTES
from clsloc.serving.env import env_flag, env_int


@dataclass(frozen=True)
class Settings:
    model: str = ""
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch_images: int = 64
    # Images in one onnxruntime run: /predict requests merged (clsloc.serving.batcher), /predict_batch chunks.
    # None: the engine's default for its device (clsloc.serving.engine.default_batch_size).
    max_batch: int | None = None
    # API requests one worker holds at once (parsing, queued, running); past it a fast 503 (clsloc.serving.http).
    max_queue: int = 32
    api_key: str | None = None
    threads: int | None = None
    workers: int = 1
    access_log: bool = True

    @property
    def max_request_bytes(self) -> int:
        """Body limit of /predict: one image plus room for the multipart envelope."""
        return self.max_bytes + 64 * 1024

    @property
    def max_batch_request_bytes(self) -> int:
        return self.max_bytes * min(self.max_batch_images, 8) + 64 * 1024

    @classmethod
    def from_env(cls, env: dict | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(
            model=env.get("CLSLOC_MODEL", "").strip(),
            max_bytes=env_int(env, "CLSLOC_MAX_BYTES", DEFAULT_MAX_BYTES),
            max_pixels=env_int(env, "CLSLOC_MAX_PIXELS", DEFAULT_MAX_PIXELS),
            max_batch_images=env_int(env, "CLSLOC_MAX_BATCH_IMAGES", 64),
            max_batch=env_int(env, "CLSLOC_MAX_BATCH", 0) if env.get("CLSLOC_MAX_BATCH") else None,
            max_queue=env_int(env, "CLSLOC_MAX_QUEUE", 32),
            api_key=env.get("CLSLOC_API_KEY") or None,
            threads=env_int(env, "CLSLOC_THREADS", 0) if env.get("CLSLOC_THREADS") else None,
            workers=env_int(env, "CLSLOC_WORKERS", 1),
            access_log=env_flag(env, "CLSLOC_ACCESS_LOG", True),
        )
