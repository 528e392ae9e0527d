"""genrec.allocator: glibc told to keep what a step frees, in a thread's arena as a Ray Train worker steps."""

import json
import subprocess
import sys

import pytest

from genrec.allocator import KEPT, NOT_GLIBC, OFF, USER, keep_freed_memory, on_glibc, user_setting


# In a fresh process: a thread allocates and touches blocks summing past one 64 MiB heap, frees them, six times over,
# and counts the minor page faults of each round (the first round faults its pages in either way). Transparent huge
# pages are off for the process (PR_SET_THP_DISABLE), so a page fault is a 4 KiB page on a kernel whose THP mode is
# "always" too.
STEPS = """
import ctypes, json, resource, sys, threading
from genrec.allocator import keep_freed_memory
libc = ctypes.CDLL(None)
assert libc.prctl(41, 1, 0, 0, 0) == 0  # PR_SET_THP_DISABLE
state = keep_freed_memory({} if sys.argv[1] == "keep" else {"GENREC_KEEP_FREED_MEMORY": "0"})
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
sizes = [24 << 20, 24 << 20, 6 << 20, 24 << 20, 3 << 20, 12 << 20]
faults = []

def steps():
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [libc.malloc(n) for n in sizes]
        for block, n in zip(blocks, sizes):
            ctypes.memset(block, 1, n)
        for block in reversed(blocks):
            libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

thread = threading.Thread(target=steps)
thread.start()
thread.join()
print(json.dumps({"state": state, "faults": faults}))
"""


def rounds(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not on_glibc(), reason="glibc's malloc only")
def test_a_threads_freed_memory_is_kept_for_the_next_step():
    kept, default = rounds("keep"), rounds("default")
    assert kept["state"] == KEPT and default["state"] == OFF
    pages = sum([24, 24, 6, 24, 3, 12]) * 256  # 4 KiB pages touched a round
    # glibc's defaults unmap the thread's second heap and fault everything in again, every round
    assert min(default["faults"][1:]) > pages // 2
    # kept: after the first round, the blocks come from memory already faulted in
    assert max(kept["faults"][1:]) < pages // 20


def test_a_users_own_malloc_settings_win():
    assert user_setting({"MALLOC_TOP_PAD_": "0"}) and user_setting({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"})
    assert user_setting({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"})
    assert not user_setting({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2:glibc.malloc.arena_max=2",
                             "MALLOC_ARENA_MAX": "2", "LD_PRELOAD": "libfoo.so"})
    assert keep_freed_memory({"MALLOC_MMAP_THRESHOLD_": "131072"}) in (USER, NOT_GLIBC)
    assert keep_freed_memory({"GENREC_KEEP_FREED_MEMORY": "0"}) in (OFF, NOT_GLIBC)
