"""What `--streamorder` costs a test that does host (CPU) tensor work: the reference
overlap loop on device="cpu" (371 small torch calls, no device work), plain against
under an attached virtual device. Under the plugin the session's device stays attached
for every test, so each of those calls passes through its function mode: that per-call
tax is what this measures (attaching is not part of a test's cost, and not timed here).

Run: python -m pytest tests/benchmarks/test_host_heavy_overhead.py --benchmark-only \
         --benchmark-timer=time.process_time
The ratio lands in extra_info of the "under_device" case. Nothing here asserts a time.
"""

import timeit

import pytest

import pytest_streamorder as so

from .test_virtual_device_overhead import overlap_program


def test_host_plain(benchmark):
    results = benchmark(overlap_program, "cpu", 0)
    assert len(results) == 8


@pytest.mark.parametrize("policy", ["delay"])
def test_host_under_device(benchmark, policy):
    with so.virtual_device(seed=0, policy=policy) as vd:
        results = benchmark(overlap_program, "cpu", 0)
        assert vd.ops_issued == 0  # host work only: nothing reached the device
    assert len(results) == 8
    _record_ratio_to_plain(benchmark)


@pytest.mark.parametrize("copy", ["synced", "in flight"])
def test_host_with_pinned_memory(benchmark, copy):
    """The same host work while a pinned buffer is registered (a session fixture's,
    say) and a non_blocking copy into it was synced, or is still in flight: only then
    are host calls on pinned memory accesses the model must see (the function mode)."""
    import torch

    with so.virtual_device(seed=0, policy="delay") as vd:
        pinned = torch.zeros(64, dtype=torch.int64, pin_memory=True)
        pinned.copy_(torch.arange(64, device="cuda"), non_blocking=True)
        if copy == "synced":
            torch.cuda.synchronize()
        results = benchmark(overlap_program, "cpu", 0)
        assert bool(vd.hb.host_memory_in_flight) == (copy == "in flight")
        torch.cuda.synchronize()
        assert pinned[-1].item() == 63
    assert len(results) == 8
    _record_ratio_to_plain(benchmark)


def _record_ratio_to_plain(benchmark):
    if benchmark.stats is not None:  # None under --benchmark-disable
        plain = min(timeit.repeat(lambda: overlap_program("cpu", 0), number=20, repeat=5)) / 20
        benchmark.extra_info["ratio_to_plain"] = round(benchmark.stats.stats.median / plain, 2)
