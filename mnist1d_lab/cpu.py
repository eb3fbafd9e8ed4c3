"""CPU settings of the lab's processes. Importing this module changes nothing.

* `tune()`, called by every training loop (numerics, so a run gives the same numbers from the command line
  and from a notebook): flush denormals. They build up as training converges (tiny Adam moments);
  flushing them made full batched runs 2.1x faster with identical accuracy.
* `configure_process()`, called once by the entry points (the CLI, its job processes, the benchmarks),
  process-wide, with no effect on the numbers:
  - keep freed memory in the heap (glibc's mmap and trim thresholds raised to 1 GiB). glibc serves
    allocations above 128 KB with a fresh mmap and returns freed heap tops to the OS, so a stacked step of
    32 MLPs (~20 activation tensors of ~1.3 MB) page-faulted ~650-900 times per step, which costs more than
    its elementwise maths; kept, 0 faults per step and the step ~15 % faster. The price: the process keeps
    its peak heap until it exits.
  - skip Python's last garbage collections at exit (`fast_exit`): 0.6-0.8 s of every process.
* Threads. The entry points (`__main__.py`, `scripts/bench_*.py`) set `OMP_WAIT_POLICY=PASSIVE` (unless
  the user set a value) before anything imports torch, and the processes they start (joblib, submitit)
  inherit it: torch's OpenMP threads then sleep while they wait for each other instead of spinning for
  a sibling the OS has descheduled. On a 2-core CPU beside one busy process, 1,000 steps of a small MLP
  on 2 threads took 8.3 s spinning and 0.6 s passive (0.5 s on one thread); beside two busy processes,
  69.7 s spinning. libgomp reads the variable once, when torch loads it, so a library user (a notebook)
  sets it in the shell: `export OMP_WAIT_POLICY=PASSIVE`. How many threads a run uses is a
  function of its config alone (`runner.default_threads`, `batched.plan.batched_threads`), never of the
  cores, so a config gives the same float32 numbers on any machine; `Threads` is such a count with its
  reason (env.json's `threads_reason`).

torch is imported on first use: the entry point imports this module in a launcher's parent too.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import functools
import gc
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_KEEP = 1 << 30


class Threads(int):
    """A torch thread count that says why it was chosen (written to env.json as `threads_reason`)."""

    reason: str

    def __new__(cls, count: int, reason: str) -> Threads:
        obj = super().__new__(cls, count)
        obj.reason = reason
        return obj

    def __getnewargs__(self) -> tuple[int, str]:  # pickles with its reason
        return int(self), self.reason


def usable_cores() -> int:
    """CPU cores this process may run on (joblib's n_jobs=-1). Never a thread count or a plan: those
    follow the config, so results do not depend on the machine."""
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return max(1, len(cores))


def tune() -> None:
    """Flush denormals (every call: torch may reset it per thread); training loops call it."""
    import torch

    torch.set_flush_denormal(True)


def configure_process() -> None:
    """The entry points' process-wide settings: keep freed memory, skip the last collections at exit."""
    _keep_freed_memory()  # no page faults from freed activations (module docstring)
    fast_exit()  # 0.6-0.8 s less per process (fast_exit's docstring)


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
