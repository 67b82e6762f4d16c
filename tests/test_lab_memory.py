"""normlib.lab.memory: page faults counted per call, and the cache-reuse timing of the speed lesson."""

import mmap
import platform
from pathlib import Path

import pytest
import torch

from normlib.lab import memory

LINUX_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
HUGE_PAGES_ALWAYS = THP.exists() and "[always]" in THP.read_text()


def test_faults_per_call_counts_the_pages_a_call_touches_first():
    if memory.minor_faults() is None:
        pytest.skip("no resource module: page faults cannot be counted here")
    pages = 256
    buffers = []

    def touch_fresh_memory():  # a new mapping each call (never heap memory an earlier test freed), every page written
        buffers.append(mmap.mmap(-1, pages * memory.PAGE_SIZE))
        for offset in range(0, pages * memory.PAGE_SIZE, memory.PAGE_SIZE):
            buffers[-1][offset] = 1

    assert memory.faults_per_call(touch_fresh_memory, calls=3, warmup=0) >= pages / 2
    assert memory.faults_per_call(lambda: None, calls=3) < pages / 2


def test_faults_per_call_refuses_no_calls():
    with pytest.raises(ValueError, match="at least 1"):
        memory.faults_per_call(lambda: None, calls=0)


@pytest.mark.skipif(not LINUX_GLIBC, reason="the held setting is glibc's")
def test_default_allocator_faults_every_call_and_held_memory_stops_faulting():
    rows, width, calls = 4096, 2048, 20  # 32 MiB per tensor: glibc maps it fresh by default
    default = memory.layer_norm_faults(rows, width, hold=False, calls=calls)
    held = memory.layer_norm_faults(rows, width, hold=True, calls=calls)
    assert len(default) == len(held) == calls
    assert min(default[1:]) > 0  # fresh pages on every call
    assert sum(held[10:]) < 0.25 * sum(default[10:])  # the memory of earlier calls is mostly reused
    assert memory.one_page_per_fault() == (memory.PAGE_SIZE == 4096 and not HUGE_PAGES_ALWAYS)
    if memory.one_page_per_fault():  # y and dx, two fresh tensors, one fault per 4 KiB page
        tensor_pages = rows * width * 4 // memory.PAGE_SIZE
        assert min(default[1:]) >= 2 * tensor_pages


def test_reuse_bandwidths_times_each_operation_both_ways():
    out = memory.reuse_bandwidths(sizes_mib=(1,), rotate=2, rounds=2, min_run_time=0.01)
    assert set(out) == {("copy", "same"), ("copy", "rotating"), ("layer_norm", "same"),
                        ("layer_norm", "rotating")}
    for per_size in out.values():
        assert list(per_size) == [1]
        assert len(per_size[1]) == 2 and all(v > 0 for v in per_size[1])
    with pytest.raises(ValueError, match="rotate"):
        memory.reuse_bandwidths(rotate=1)


def test_layer_norm_step_is_torchs_layer_norm_forward_and_backward():
    step = memory._layer_norm_step(8, 16)
    dx, dw, db = step()
    assert dx.shape == (8, 16) and dw.shape == db.shape == (16,)
    assert torch.isfinite(dx).all()
