"""vLLM-style staging: the host fills pinned memory through a NumPy view, an H2D
non_blocking copy carries it to the device, an event says when the staging is free again.
Each correct test has a broken twin (vLLM #24527, #34866); `staging` and `streams` come
from conftest.py (module and session scope)."""

import pytest
import torch

from .staging import StagingBuffer


def _step(staging, values, done):
    """One engine step: fill the staging rows, queue the H2D copy, use it on the device."""
    n = len(values)
    staging.np[:n] = values
    rows = staging.copy_to_gpu(n)
    total = rows.sum()
    if done is not None:
        done.record()
    return total


def test_refill_waits_for_copy(staging):
    """Each refill of the staging waits for the previous step's copy (event.synchronize)."""
    done = torch.cuda.Event()
    totals = []
    for step in range(3):
        done.synchronize()  # the previous H2D copy has read the staging
        totals.append(_step(staging, [step + 1] * 8, done))
    torch.cuda.synchronize()
    assert [t.item() for t in totals] == [8, 16, 24]


def test_refill_before_copy_ran(staging):
    """Twin (vLLM #24527): the host refills the staging while the last H2D is pending."""
    done = torch.cuda.Event()
    totals = []
    torch.cuda._sleep(20_000_000)  # the copies below run late
    for step in range(3):
        totals.append(_step(staging, [step + 1] * 8, done))
    torch.cuda.synchronize()
    assert [t.item() for t in totals] == [8, 16, 24]


def test_dummy_step_records_event(staging):
    """A dummy (padding) step records the event too, so the next refill waits for it."""
    done = torch.cuda.Event()
    done.synchronize()
    first = _step(staging, [1] * 8, done)
    done.synchronize()
    torch.cuda._sleep(20_000_000)
    _step(staging, [0] * 4, done)  # dummy run: its result is not used
    done.synchronize()
    second = _step(staging, [3] * 8, done)
    torch.cuda.synchronize()
    assert (first.item(), second.item()) == (8, 24)


def test_dummy_step_skips_event(staging):
    """Twin (vLLM #34866): the dummy step skips the event; the refill waits a stale one."""
    done = torch.cuda.Event()
    first = _step(staging, [1] * 8, done)
    done.synchronize()
    torch.cuda._sleep(20_000_000)
    _step(staging, [0] * 4, None)  # dummy run without its event
    done.synchronize()  # the first step's event: says nothing about the dummy copy
    second = _step(staging, [3] * 8, done)
    torch.cuda.synchronize()
    assert (first.item(), second.item()) == (8, 24)


def test_copy_to_gpu_returns_device_rows(staging):
    """copy_to_gpu returns the device rows themselves (vLLM hands them to the model)."""
    staging.np[:4] = [5, 6, 7, 8]
    rows = staging.copy_to_gpu(4)
    assert rows.device.type == "cuda"
    assert rows.data_ptr() == staging.gpu.data_ptr()
    assert rows.tolist() == [5, 6, 7, 8]


def test_d2h_numpy_view_read_after_sync(streams):
    """Device results copied D2H on a side stream are read through NumPy after its event."""
    out = StagingBuffer(16)
    streams.copy.wait_stream(torch.cuda.current_stream())  # out.gpu's zero-fill first
    with torch.cuda.stream(streams.copy):
        torch.cuda._sleep(20_000_000)
        out.gpu.copy_(torch.arange(16, dtype=torch.int32, device="cuda") * 2)
        out.copy_to_cpu()
        ready = torch.cuda.Event()
        ready.record()
    view = out.np  # taken before the copy ran: a view, not a read
    ready.synchronize()
    assert view[:4].tolist() == [0, 2, 4, 6]


def test_d2h_numpy_view_read_before_sync(streams):
    """Twin: the host reads the NumPy view while the D2H copy is still pending."""
    out = StagingBuffer(16)
    streams.copy.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(streams.copy):
        torch.cuda._sleep(20_000_000)
        out.gpu.copy_(torch.arange(16, dtype=torch.int32, device="cuda") * 2)
        out.copy_to_cpu()
    first_four = out.np[:4].tolist()
    streams.copy.synchronize()
    assert len(first_four) == 4


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
