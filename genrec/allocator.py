"""glibc's malloc in a training process: memory a step frees is kept for the next step, not handed back to the kernel.

A Ray Train worker runs the training function in a thread of its own, not in the process's main thread, and glibc's
malloc gives such a thread an arena of its own, built from 64 MiB heaps. With glibc's defaults a heap that comes free
is unmapped and a free top is trimmed (MADV_DONTNEED) within the step, so the next step's activations, gradients and
optimizer temporaries are faulted in again, page by page (BENCHMARKS.md, "The training thread's freed memory, kept").
Three mallopt settings stop that for the whole process: allocations up to MMAP_THRESHOLD come from the arenas instead
of mappings of their own, up to TRIM_THRESHOLD of free top is kept, and every heap grows with TOP_PAD to spare, which
also keeps a heap that comes free from being unmapped. Setting any one of them turns off glibc's own sliding mmap
threshold, so the three go together. The price: the process keeps the memory of its largest step resident instead of
handing back what a step frees, which in a training process is the memory the next step takes again, and each of its
thread arenas (Ray's threads' too) grows 64 MiB at a time.

MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_, the same three as glibc.malloc tunables
(GLIBC_TUNABLES), or an allocator preloaded in glibc's place (LD_PRELOAD naming a malloc, such as tcmalloc or jemalloc,
whose mallopt may accept the settings and ignore them) are a user's own choice: then nothing is set here.
GENREC_KEEP_FREED_MEMORY=0 leaves glibc's defaults too (a local Ray's workers inherit the variable from the process
that starts it; on a cluster, set it in the job's runtime environment).
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Mapping

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # the most glibc accepts on 64-bit (half its 64 MiB heap)
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20  # a whole heap: one that comes free is kept
SETTINGS = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
ENV_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold", "glibc.malloc.top_pad")
KEEP_VAR = "GENREC_KEEP_FREED_MEMORY"  # "0": glibc's defaults

# what keep_freed_memory did (a training run records it with every epoch)
KEPT = "kept"
USER = "the environment's"
OFF = "glibc's defaults"
NOT_GLIBC = "not glibc"


def on_glibc() -> bool:
    """Whether this process runs on Linux with glibc's malloc (the one these settings are for)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def user_setting(environ: Mapping[str, str]) -> bool:
    """Whether `environ` sets these thresholds of glibc's malloc itself, or preloads another malloc."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    return (any(key in environ for key in ENV_SETTINGS) or any(name + "=" in tunables for name in TUNABLES)
            or "malloc" in environ.get("LD_PRELOAD", ""))


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> str:
    """Set SETTINGS in this process (KEPT); USER where `environ` sets them itself, OFF where KEEP_VAR is "0",
    NOT_GLIBC off glibc. A setting glibc refuses raises: a silent default would lose the step's speed unseen."""
    if not on_glibc():
        return NOT_GLIBC
    if user_setting(environ):
        return USER
    if environ.get(KEEP_VAR) == "0":
        return OFF
    libc = ctypes.CDLL(None)
    for param, value in SETTINGS:
        if libc.mallopt(param, value) != 1:
            raise RuntimeError(f"glibc's mallopt refused parameter {param} = {value}")
    return KEPT
