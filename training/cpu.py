"""CPU speed settings that must be in place before the heavy allocations start.

glibc serves big allocations (activations of a conv net are megabytes) with
fresh ``mmap`` pages and returns them on ``free``: every training step then
page-faults its activations back in. Disabling mmap for malloc
(``MALLOC_MMAP_MAX_=0``: several times faster fine-tuning on a CPU, see
``docs/benchmarks.md``) and keeping freed memory instead of trimming it makes the allocator
reuse the same pages step after step. ``mallopt`` applies the same setting
from inside the process, so ``clsloc train`` needs no wrapper script; an
explicit ``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment
wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of freed heap instead of returning it


def tune_cpu_allocator() -> bool:
    """Apply the glibc settings; True when applied (Linux with glibc), False otherwise."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = True
    if "MALLOC_MMAP_MAX_" not in os.environ:
        ok &= bool(mallopt(M_MMAP_MAX, 0))
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        ok &= bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return ok
