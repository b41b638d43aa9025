"""How our cost grows with the program: per-op cost against the number of freed blocks
held by the model and against the number of streams, a test's cost against the number
of tests the session ran before it, the memory of a long program, and the first virtual
device's warm-up in a fresh process.

Run: python -m pytest tests/benchmarks/test_scaling.py --benchmark-only
(--benchmark-json=FILE keeps the numbers). `per_op_us` lands in each benchmark's
extra_info; the goal is a flat curve (within 1.5x from the smallest to the largest
size). Nothing here asserts a time; the tests do assert what the program did (how many
freed blocks were held, that it ran race-free), so a broken setup cannot pass as fast.
CI runs them once with --benchmark-disable and the small sizes only (STREAMORDER_FULL_CURVES
unset); set STREAMORDER_FULL_CURVES=1 for the whole curve.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import tracemalloc

import pytest

from pytest_streamorder.model import WRITE, HappensBefore

FULL = os.environ.get("STREAMORDER_FULL_CURVES") == "1"
FREED = (10, 1000, 10_000, 30_000) if FULL else (10, 1000)
STREAMS = (2, 8, 32) if FULL else (2, 8)
EARLIER_TESTS = (10, 300, 1000) if FULL else (10, 100)
BLOCK = 512


def _per_op(benchmark, ops: int) -> None:
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["per_op_us"] = round(benchmark.stats.stats.median / ops * 1e6, 2)


# --- the model alone -------------------------------------------------------------------

@pytest.mark.parametrize("freed", FREED)
def test_model_alloc_with_freed_blocks(benchmark, freed):
    """An allocate/write/free cycle at one address while `freed` other blocks, written by
    another stream and freed, wait in the model for a reuse that never comes."""
    hb = HappensBefore()
    side, main = hb.new_stream("side"), hb.new_stream("main")
    for i in range(freed):
        a = hb.allocate(BLOCK, f"t{i}", stream=side, address=(i + 1) * BLOCK)
        hb.launch(side, "fill_", [(a, 0, BLOCK, WRITE)])
        hb.free(a)
    assert hb.freed_blocks() == freed
    cycles = 200

    def steady():
        for _ in range(cycles):
            a = hb.allocate(BLOCK, "hot", stream=main, address=0)
            hb.launch(main, "fill_", [(a, 0, BLOCK, WRITE)])
            hb.free(a)

    benchmark(steady)
    assert hb.races == [] and hb.freed_blocks() == freed + 1
    _per_op(benchmark, 3 * cycles)


@pytest.mark.parametrize("streams", STREAMS)
def test_model_ops_over_streams(benchmark, streams):
    """Launches round-robin over `streams` streams, each waiting on the previous one's
    event (a chain: every clock join touches every stream's entry)."""
    hb = HappensBefore()
    agents = [hb.new_stream(f"s{i}") for i in range(streams)]
    events = [hb.new_event(f"e{i}") for i in range(streams)]
    buf = hb.allocate(BLOCK, "buf", stream=agents[0], address=0)
    rounds = max(1, 256 // streams)

    def chain():
        for _ in range(rounds):
            for k, s in enumerate(agents):
                hb.wait(s, events[k - 1])
                hb.launch(s, "add_", [(buf, 0, BLOCK, WRITE)])
                hb.record(events[k], s)

    benchmark(chain)
    assert hb.races == []
    _per_op(benchmark, rounds * streams)


def test_model_memory_bounded():
    """A long race-free program (alloc/write/record_stream/free over 4 streams): the
    model's memory after 10x more ops stays within 1.2x plus a little."""
    hb = HappensBefore()
    streams = [hb.new_stream(f"s{i}") for i in range(4)]
    events = [hb.new_event(f"e{i}") for i in range(4)]
    live: list = []

    def run(n, start):
        for i in range(start, start + n):
            k = i % 4
            s = streams[k]
            hb.wait(s, events[k - 1])
            if i % 5 == 0:
                live.append(hb.allocate(BLOCK, "t", stream=s, address=(i % 64) * BLOCK))
            hb.launch(s, "add_", [(live[-1], 0, BLOCK, WRITE)])
            hb.record(events[k], s)
            if len(live) > 8:
                old = live.pop(0)
                hb.record_stream(old, streams[(k + 1) % 4])
                hb.free(old)

    n = 100_000 if FULL else 10_000
    tracemalloc.start()
    try:
        run(n // 10, 0)
        gc.collect()  # (an access and its allocation refer to each other)
        early = tracemalloc.get_traced_memory()[0]
        run(n - n // 10, n // 10)
        gc.collect()
        late = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert hb.races == [] and hb.accesses == n
    assert late <= 1.2 * early + 64 * 1024, (early, late)


# --- the virtual device ----------------------------------------------------------------

@pytest.mark.parametrize("freed", FREED)
def test_device_alloc_with_freed_blocks(benchmark, freed):
    """The same cycle on the virtual device (a tensor made, written, dropped, on the
    current stream) while `freed` blocks written on a side stream sit in the caching
    allocator's pool of another size."""
    import torch

    import pytest_streamorder as so

    with so.virtual_device(seed=0, policy="delay") as vd:
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            held = [torch.empty(BLOCK // 4, device="cuda").fill_(1.0) for _ in range(freed)]
        del held
        assert vd.hb.freed_blocks() >= freed
        cycles = 100

        def steady():
            for _ in range(cycles):
                t = torch.empty(2 * BLOCK // 4, device="cuda")
                t.fill_(2.0)
                del t

        ops_before = vd.ops_issued
        benchmark(steady)
        ops = (vd.ops_issued - ops_before) // max(1, benchmark.stats.stats.rounds
                                                     if benchmark.stats is not None else 1)
        assert ops >= cycles
        torch.cuda.synchronize()
    assert vd.races == []
    _per_op(benchmark, cycles)


@pytest.mark.parametrize("streams", STREAMS)
def test_device_ops_over_streams(benchmark, streams):
    """On the virtual device: an add_ on each of `streams` streams in turn, each waiting
    on the previous one's event."""
    import torch

    import pytest_streamorder as so

    with so.virtual_device(seed=0, policy="random") as vd:
        agents = [torch.cuda.Stream() for _ in range(streams)]
        events = [torch.cuda.Event() for _ in range(streams)]
        buf = torch.zeros(16, device="cuda")
        torch.cuda.synchronize()
        rounds = max(1, 128 // streams)

        def chain():
            for _ in range(rounds):
                for k, s in enumerate(agents):
                    s.wait_event(events[k - 1])
                    with torch.cuda.stream(s):
                        buf.add_(1)
                    events[k].record(s)

        benchmark(chain)
        torch.cuda.synchronize()
    assert vd.races == []
    _per_op(benchmark, rounds * streams)


def _two_stream_test():
    """A test as an overlap scheduler's suite writes one: its own two streams, a handoff
    through an event, a copy back, a sync."""
    import torch

    forward, d2h = torch.cuda.Stream(), torch.cuda.Stream()
    ready = torch.cuda.Event()
    with torch.cuda.stream(forward):
        out = torch.arange(256, device="cuda") * 2
        ready.record()
    d2h.wait_event(ready)
    with torch.cuda.stream(d2h):
        host = out.to("cpu", non_blocking=True)
    d2h.synchronize()
    return host


@pytest.mark.parametrize("earlier", EARLIER_TESTS)
def test_session_test_after_earlier_tests(benchmark, earlier):
    """One schedule of a two-stream test, as `pytest --streamorder` runs it, after
    `earlier` tests that made (and dropped) streams of their own."""
    from pytest_streamorder.sim.device import Run
    from pytest_streamorder.sim.session import SessionRuntime

    session = SessionRuntime().install()
    seeds = iter(range(10**9))
    try:
        device = session.device

        def one_test():
            device.start_run(Run(seed=next(seeds), policy="delay"))
            try:
                host = _two_stream_test()
            finally:
                device.end_of_test()
                device.start_run(session.idle_run())
            return host

        for _ in range(earlier):
            one_test()
        host = benchmark(one_test)
        agents = len(device.hb.agents)
    finally:
        session.uninstall()
    assert int(host[-1]) == 510
    assert agents <= 4  # host, default, and this test's two: earlier tests' slots reused
    _per_op(benchmark, 1)  # per_op_us here is per test


WARM_UP = textwrap.dedent("""
    import sys, time
    import torch
    import pytest_streamorder as so
    t = time.perf_counter()
    with so.virtual_device(seed=0):
        torch.ones(4, device="cuda").add_(1)
    print(time.perf_counter() - t, "torch._dynamo" in sys.modules)
""")


def test_first_virtual_device_warm_up(benchmark):
    """The first virtual_device() of a fresh process (torch already imported): it must
    not import torch._dynamo (1-3 s) when nothing compiles."""
    def fresh_process():
        out = subprocess.run([sys.executable, "-c", WARM_UP], capture_output=True, text=True,
                             check=True).stdout.split()
        return float(out[0]), out[1] == "True"

    seconds, dynamo = benchmark.pedantic(fresh_process, rounds=3 if FULL else 1)
    assert not dynamo
    if benchmark.stats is not None:
        benchmark.extra_info["first_device_s"] = round(seconds, 3)
