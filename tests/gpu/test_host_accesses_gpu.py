"""Host accesses to pinned memory on the real-GPU backend: through NumPy views
(ops/numpy_views.py) reported at their line, and writes from C code (ctypes) found by
comparing an H2D copy's source with its snapshot at the host sync that covers the copy
(gpu/pinned.py, UploadWatches). Each broken program has a correct twin that stays silent.
Skipped without CUDA (the CPU-side logic is tested in tests/unit/test_host_writes.py and
tests/unit/test_numpy_views.py)."""

from __future__ import annotations

import ctypes
import inspect

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real CUDA device"),
]

I32 = torch.int32


def _backend(**kw):
    from pytest_streamorder.gpu import cuda_backend

    return cuda_backend(seed=0, raise_on_race=False, delay_probability=0, **kw)


def _line(marker: str) -> int:
    lines = inspect.getsource(inspect.getmodule(_line)).splitlines()
    return next(i for i, text in enumerate(lines, 1) if marker in text and "_line(" not in text)


def _sleep_ms(ms: float) -> None:
    from pytest_streamorder.gpu.calibration import cycles_per_ms

    torch.cuda._sleep(int(ms * cycles_per_ms()))


def _staging(fill, sync_first: bool):
    """Fill a pinned staging buffer, queue its H2D copy behind a sleep on a side stream,
    then refill it with `fill(cpu)` (before or after syncing the side stream)."""
    cpu = torch.ones(64, dtype=I32, pin_memory=True)
    gpu = torch.zeros(64, dtype=I32, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _sleep_ms(5)
        gpu.copy_(cpu, non_blocking=True)  # GPU-ISSUE
    if sync_first:
        side.synchronize()
    fill(cpu)
    torch.cuda.synchronize()  # GPU-SYNC
    return gpu.tolist()


def _numpy_fill(cpu):
    view = cpu.numpy()  # a view: no access yet
    view[:8] = 2  # GPU-NUMPY-WRITE


def _c_fill(cpu):
    ctypes.memset(cpu.data_ptr() + 16, 0, 8)  # elements 4 and 5, from "C code"


def _needs_numpy():
    pytest.importorskip("numpy", reason="NumPy views of pinned memory need NumPy")


def test_numpy_write_before_the_copy_is_reported_at_its_line():
    _needs_numpy()
    with _backend() as be:
        _staging(_numpy_fill, sync_first=False)
    assert len(be.races) == 1, "\n\n".join(str(r) for r in be.races)
    text = str(be.races[0])
    assert "numpy write a[key] = ..." in text
    assert f"test_host_accesses_gpu.py:{_line('# GPU-ISSUE')}" in text
    assert f"test_host_accesses_gpu.py:{_line('# GPU-NUMPY-WRITE')}" in text


def test_c_write_before_the_copy_is_found_at_the_covering_sync():
    with _backend() as be:
        _staging(_c_fill, sync_first=False)
    assert len(be.races) == 1, "\n\n".join(str(r) for r in be.races)
    race = be.races[0]
    assert (race.later.start, race.later.stop) == (16, 24)
    text = str(race)
    assert "code the plugin does not see" in text
    assert (f"found: at the host sync that covered the copy (at "
            f"tests/gpu/test_host_accesses_gpu.py:{_line('# GPU-SYNC')}") in text
    assert f"test_host_accesses_gpu.py:{_line('# GPU-ISSUE')}" in text


@pytest.mark.parametrize("fill", [_numpy_fill, _c_fill], ids=["numpy", "c"])
def test_writes_after_the_sync_are_silent(fill):
    if fill is _numpy_fill:
        _needs_numpy()
    with _backend() as be:
        values = _staging(fill, sync_first=True)
    assert values == [1] * 64
    assert not be.races, "\n\n".join(str(r) for r in be.races)


def test_round_trip_through_one_staging_buffer_is_silent():
    """D2H into the staging and H2D from it on one stream: the device changes the source
    before the sync, which is not taken for a host write."""
    with _backend() as be:
        stage = torch.zeros(64, dtype=I32, pin_memory=True)
        a = torch.arange(64, dtype=I32, device="cuda")
        b = torch.zeros(64, dtype=I32, device="cuda")
        _sleep_ms(2)
        stage.copy_(a, non_blocking=True)
        b.copy_(stage, non_blocking=True)
        stage.copy_(a * 2, non_blocking=True)
        torch.cuda.synchronize()
        assert b.tolist() == list(range(64))
    assert not be.races, "\n\n".join(str(r) for r in be.races)


def test_numpy_read_of_a_pending_d2h_target_is_reported():
    _needs_numpy()
    with _backend() as be:
        gpu = torch.arange(64, dtype=I32, device="cuda")
        cpu = torch.zeros(64, dtype=I32, pin_memory=True)
        view = cpu.numpy()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            _sleep_ms(5)
            cpu.copy_(gpu, non_blocking=True)
        view[:4].tolist()  # GPU-NUMPY-READ
        side.synchronize()
        assert view[:4].tolist() == [0, 1, 2, 3]  # after the sync: silent
    assert len(be.races) == 1, "\n\n".join(str(r) for r in be.races)
    assert f"test_host_accesses_gpu.py:{_line('# GPU-NUMPY-READ')}" in str(be.races[0])


def test_the_staging_block_is_still_reused_by_the_allocator():
    """A watched source does not keep its pinned block alive (weak reference only)."""
    with _backend() as be:
        gpu = torch.zeros(64, dtype=I32, device="cuda")
        t = torch.ones(64, dtype=I32, pin_memory=True)
        gpu.copy_(t, non_blocking=True)
        torch.cuda.synchronize()
        ptr = t.data_ptr()
        del t
        t = torch.ones(64, dtype=I32, pin_memory=True)
        assert t.data_ptr() == ptr, "allocation not reused"
    assert not be.races
