"""The GPU backend leaves PyTorch's pinned host allocator as it is: blocks are reused after
the program drops them (PyTorch's test_caching_pinned_memory, in our own words), a block
handed out again is a new allocation in the model (no false alarm from its old owner),
and the garbage-collector scenario that crashed torch 2.11 with a weakref finalizer on
pinned storages (many pinned tensors made and dropped, in reference cycles, while the
dispatch mode and trace callbacks run, gc.collect() in between) runs clean.
Skipped without CUDA; the bookkeeping itself is tested on the CPU in
tests/unit/test_gpu_pinned_blocks.py."""

from __future__ import annotations

import gc

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real CUDA device"),
]


def _backend(**kw):
    from pytest_streamorder.gpu import cuda_backend

    return cuda_backend(**kw)


def _cycles_per_ms() -> float:
    from pytest_streamorder.gpu.calibration import cycles_per_ms

    return cycles_per_ms()


@pytest.mark.parametrize("delays", [0.0, 1.0])
def test_caching_pinned_memory(delays):
    cycles_per_ms = _cycles_per_ms()
    with _backend(seed=0, delay_probability=delays, fire_probability=delays,
                  delay_ms=0.3) as be:
        t = torch.tensor([1.0]).pin_memory()
        ptr = t.data_ptr()
        del t
        t = torch.tensor([1.0]).pin_memory()
        assert t.data_ptr() == ptr, "allocation not reused"
        gpu_tensor = torch.zeros(1, device="cuda")
        torch.cuda._sleep(int(500 * cycles_per_ms))  # the copy below runs late
        gpu_tensor.copy_(t, non_blocking=True)
        del t
        t = torch.tensor([1.0]).pin_memory()
        assert t.data_ptr() != ptr, "allocation reused too soon"
        assert gpu_tensor.tolist() == [1.0]
    assert not be.races, "\n\n".join(str(r) for r in be.races)


def test_a_reused_pinned_block_is_a_new_allocation():
    """A block freed after its copy completed and handed to a new tensor: the host writes
    the new tensor at once. Correct code: no race with the old owner's copy."""
    with _backend(seed=0, delay_probability=0) as be:
        dst = torch.empty(64, device="cuda")
        for step in range(20):
            staging = torch.full((64,), float(step)).pin_memory()
            address = staging.data_ptr()
            dst.copy_(staging, non_blocking=True)
            torch.cuda.current_stream().synchronize()
            assert dst[0].item() == float(step)
            del staging
            again = torch.empty(64, pin_memory=True)
            assert again.data_ptr() == address, "the host allocator did not reuse the block"
            again.fill_(-1.0)  # a host write to the new owner
            del again
    assert not be.races, "\n\n".join(str(r) for r in be.races)


def test_the_new_owner_of_a_block_still_races_with_its_own_copies():
    """Tracking survives reuse: a host write to a reused block while its *new* owner's
    H2D copy may still run is reported."""
    cycles_per_ms = _cycles_per_ms()
    with _backend(seed=0, delay_probability=0, raise_on_race=False) as be:
        first = torch.ones(32).pin_memory()
        del first
        staging = torch.ones(32).pin_memory()
        dst = torch.empty(32, device="cuda")
        torch.cuda._sleep(int(20 * cycles_per_ms))
        dst.copy_(staging, non_blocking=True)
        staging.fill_(2.0)  # no sync: the copy may not have read it yet
        torch.cuda.synchronize()
    assert be.races and "overwrote" in str(be.races[0])


def test_gc_stress_with_pinned_tensors_modes_and_callbacks():
    """The scenario that crashed the collector on torch 2.11 with a weakref finalizer:
    pinned tensors made and dropped in reference cycles, copies and events in flight on
    two streams, gc.collect() in between, the backend's modes and trace callbacks on."""
    side = torch.cuda.Stream()
    with _backend(seed=3, delay_probability=0.5, fire_probability=0.5, delay_ms=0.05) as be:
        dev = torch.zeros(320, device="cuda")  # the largest n below
        done = torch.cuda.Event()
        total = 0.0
        for i in range(400):
            n = 64 + (i % 5) * 64
            p = torch.full((n,), float(i % 7), pin_memory=True)
            cycle = {"tensor": p}
            cycle["self"] = cycle  # only the collector frees it
            with torch.cuda.stream(side if i % 2 else torch.cuda.current_stream()):
                dev[:n].copy_(p, non_blocking=True)
                back = dev[:n].to("cpu", non_blocking=True)  # a fresh pinned output
                done.record()
            done.synchronize()
            total += back[0].item()
            del p, cycle, back
            if i % 25 == 0:
                gc.collect()
            torch.cuda.current_stream().wait_stream(side)
        gc.collect()
        torch.cuda.synchronize()
    assert not be.races, "\n\n".join(str(r) for r in be.races)
    assert total == sum(float(i % 7) for i in range(400))
    assert len(be._pinned) == 0  # the registry released every weak reference at the end
