"""What the virtual device costs: the reference overlap loop (8 steps, batch 16) on the
virtual device against the same program eager on device="cpu".

Two ways to count a schedule: `test_virtual_device` opens a `virtual_device()` per
schedule (attach and detach included, ~0.8 ms), `test_schedule_in_session` runs each
schedule as `pytest --streamorder` does, a Run on the session's attached device.

Run: python -m pytest tests/benchmarks/test_virtual_device_overhead.py --benchmark-only
The ratio, schedules/s and device ops/s land in the benchmark's extra_info (and
--benchmark-json); eager CPU records programs/s.
Nothing here asserts a time: CI runs it once with --benchmark-disable to keep it working.
"""

import random
import timeit

import pytest

import pytest_streamorder as so
from reference_impl.overlap_loop import OverlapLoop

STEPS, BATCH, POOL = 8, 16, 32


def overlap_program(device: str, seed: int) -> list:
    """The workload: admit BATCH requests, run STEPS spec steps, check every result."""
    rng = random.Random(seed)
    loop = OverlapLoop(POOL, device=device)
    for slot in range(1, BATCH + 1):
        loop.admit(slot, rng.randint(1, 5))
    for _ in range(STEPS):
        indices = list(range(1, BATCH + 1))
        loop.step(indices, [rng.randint(1, 3) for _ in indices], spec=True)
    results = loop.synchronize()
    for r in results:
        r.check()
    return results


def test_eager_cpu(benchmark):
    results = benchmark(overlap_program, "cpu", 0)
    assert len(results) == STEPS
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["programs_per_s"] = round(1 / benchmark.stats.stats.mean, 1)


@pytest.mark.parametrize("policy", ["eager", "random", "delay"])
def test_virtual_device(benchmark, policy):
    seeds = iter(range(10**9))

    def one_schedule():
        with so.virtual_device(seed=next(seeds), policy=policy) as vd:
            overlap_program("cuda", 0)
        return vd

    vd = benchmark(one_schedule)
    assert vd.races == []
    assert vd.ops_issued > STEPS * 8  # the program really ran on the device
    median = _record_ratio(benchmark)
    if median is not None:
        benchmark.extra_info["device_ops_per_schedule"] = vd.ops_issued
        benchmark.extra_info["device_ops_per_s"] = round(vd.ops_issued / median)


def _record_ratio(benchmark):
    """schedules/s and the ratio to eager CPU in extra_info; the median (None under
    --benchmark-disable). The median: a full (generation 2) garbage collection of torch's
    ~300k objects lands in about one schedule in 40 and would dominate a mean."""
    if benchmark.stats is None:
        return None
    median = benchmark.stats.stats.median
    eager_cpu = min(timeit.repeat(lambda: overlap_program("cpu", 0), number=5, repeat=5)) / 5
    benchmark.extra_info["schedules_per_s"] = round(1 / median, 1)
    benchmark.extra_info["ratio_to_eager_cpu"] = round(median / eager_cpu, 1)
    return median


@pytest.mark.parametrize("policy", ["eager", "random", "delay"])
def test_schedule_in_session(benchmark, policy):
    from pytest_streamorder.sim.session import SessionRuntime
    from pytest_streamorder.sim.device import Run

    seeds = iter(range(10**9))
    session = SessionRuntime().install()
    try:
        device = session.device

        def one_schedule():
            run = Run(seed=next(seeds), policy=policy)
            device.start_run(run)
            try:
                overlap_program("cuda", 0)
            finally:
                device.end_of_test()
                device.start_run(session.idle_run())
            return run

        run = benchmark(one_schedule)
    finally:
        session.uninstall()
    assert run.races == []
    _record_ratio(benchmark)
