"""keep_freed_memory: freed activations are reused, not page-faulted in afresh (counted in minor page faults of a
fresh process, not in time)."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

from workbench.hardware.deploy import keep_freed_memory

PROBE = """
import resource, sys, torch
from workbench.hardware.timing import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(2):
    torch.ones(8 << 20).sum()  # first 32 MB blocks: the faults after these are the churn
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(8 << 20).sum()  # 32 MB allocated, touched and freed each time, like an activation
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or "libc" not in str(ctypes.util.find_library("c")),
                    reason="glibc's mallopt")  # fmt: skip
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    churn, kept = _faults("default"), _faults("keep")
    assert churn > 10 * 4000  # 32 MB = 8192 pages of 4 KiB, faulted in on each of the 10 allocations
    assert kept <= 2 * 8192  # at most two blocks' pages again (heap layout), not one per allocation


def test_bad_size_is_refused():
    with pytest.raises(ValueError, match="max_bytes"):
        keep_freed_memory(0)
