"""Process-wide CPU settings every training path applies: flushed denormals and a malloc that keeps
freed memory.

* Denormals build up as training converges (tiny Adam moments); flushing them made full batched runs
  2.1x faster with identical accuracy (speed-notes.md).
* glibc serves allocations above M_MMAP_THRESHOLD (128 KB, raised dynamically only so far) with a fresh
  mmap and returns freed heap tops to the OS (M_TRIM_THRESHOLD). A stacked step of 32 MLPs allocates
  ~20 activation tensors of ~1.3 MB and frees them again, so every step page-faulted ~650-900 times
  (measured with getrusage ru_minflt), which in this VM costs more than the elementwise maths. Keeping
  freed memory in the heap (both thresholds raised to 1 GiB) brings that to 0 faults per step and the
  K=32 MLP step from ~11 to ~9.5 ms here. The price: the process keeps its peak heap until it exits.
* At exit Python runs full garbage collections over every object it tracks (`fast_exit` skips them).

torch is imported on first use: the entry point imports this module in a launcher's parent too.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import functools
import gc
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_KEEP = 1 << 30


def tune() -> None:
    """Flush denormals (every call: torch may reset it per thread) and keep freed memory (once)."""
    import torch

    torch.set_flush_denormal(True)
    _keep_freed_memory()


@functools.cache
def _keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; False (and nothing changed) on other C libraries."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _KEEP) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP) == 1
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): the default allocator stays
        ok = False
    log.debug("malloc keeps freed memory: %s", ok)
    return ok


@functools.cache
def fast_exit() -> None:
    """Skip the interpreter's last garbage collections when this process exits (lab processes only).

    With torch and the lab loaded Python tracks ~0.2 M objects; its full collections at exit took 0.6-0.8 s of
    every process here (`import torch`, then exit: 2.1-2.7 s; 1.5-1.7 s with os._exit), paid by each run,
    test subprocess and joblib worker (whose parent waits for them to exit). Frozen objects are never
    scanned: `gc.freeze()` at exit cut it to 0.15-0.26 s. Registered after logging's exit handler, so
    it runs first (atexit is last-in first-out) and logging still flushes and closes its files; records
    are written and closed explicitly, so nothing depends on those last collections.
    """
    atexit.register(gc.freeze)
