"""What exact memory costs: the reference overlap loop (8 steps, batch 16) on the virtual
device with exact sets (strided views compared element by element, indexed ops resolved
from their index values when they run) against the same run with every set widened to
its byte span (ops/ranges.set_exact(False): the detector before exact sets).

Run: python -m pytest tests/benchmarks/test_exact_sets_overhead.py --benchmark-only
us per device op lands in extra_info (and --benchmark-json); compare the two rows.
Nothing here asserts a time: CI runs it once with --benchmark-disable.
"""

import pytest

import pytest_streamorder as so
from pytest_streamorder.ops import ranges
from tests.benchmarks.test_virtual_device_overhead import STEPS, overlap_program


@pytest.mark.parametrize("sets", ["spans", "exact"])
def test_overlap_loop(benchmark, sets):
    previous = ranges.set_exact(sets == "exact")
    seeds = iter(range(10**9))

    def one_schedule():
        with so.virtual_device(seed=next(seeds), policy="random") as vd:
            overlap_program("cuda", 0)
        return vd

    try:
        vd = benchmark(one_schedule)
    finally:
        ranges.set_exact(previous)
    assert vd.races == []
    assert vd.ops_issued > STEPS * 8
    assert vd.hb.unresolved == 0
    if benchmark.stats is not None:  # None under --benchmark-disable
        mean = benchmark.stats.stats.mean
        benchmark.extra_info["device_ops_per_schedule"] = vd.ops_issued
        benchmark.extra_info["us_per_device_op"] = round(mean / vd.ops_issued * 1e6, 2)
