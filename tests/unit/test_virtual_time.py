"""Plausible time on the virtual device: a policy may make work late, never impossibly
early. PyTorch's timing-based stream tests (test_to_non_blocking, test_events,
test_events_elapsedtime, test_record_stream, test_record_stream_on_shifted_view), in
our own words, must pass on every policy and several seeds; then the scheduler's rules
themselves, torch-free.
"""

from __future__ import annotations

import statistics

import pytest
import torch

import pytest_streamorder as so
from pytest_streamorder.scheduling import Chooser, EventMark, Item, POLICIES, Scheduler
from pytest_streamorder.sim.device import SLEEP_CYCLES_PER_NS

pytest_plugins = ["pytester"]

SEEDS = range(4)
SCHEDULES = [(p, s) for p in POLICIES for s in SEEDS]


def get_cycles_per_ms() -> float:
    """As PyTorch's test suite calibrates its sleeps: ten measurements of a 1M-cycle
    sleep between two timing events, the two highest and two lowest dropped. (PyTorch
    caches the answer; call it before recording the events of a measurement.)"""
    def measure() -> float:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(1_000_000)
        end.record()
        end.synchronize()
        return 1_000_000 / start.elapsed_time(end)

    vals = sorted(measure() for _ in range(10))
    return statistics.mean(vals[2:8])


@pytest.mark.parametrize("policy,seed", SCHEDULES)
def test_to_non_blocking(policy, seed):
    with so.virtual_device(seed=seed, policy=policy) as vd:
        stream = torch.cuda.current_stream()
        cycles_per_ms = get_cycles_per_ms()
        for dst in ("cuda", "cpu"):
            for non_blocking in (True, False):
                src = (torch.randn(1000, device="cuda") if dst == "cpu"
                       else torch.randn(1000).pin_memory())
                torch.cuda.synchronize()
                torch.cuda._sleep(int(100 * cycles_per_ms))  # the copy runs late
                b = src.to(device=dst, non_blocking=non_blocking)
                # a non_blocking copy returns before the 100 ms sleep can be over; a
                # blocking one only after it
                assert stream.query() is (not non_blocking), (dst, non_blocking)
                stream.synchronize()
                assert stream.query() is True
                assert torch.equal(b.cpu(), src.cpu())
                assert b.is_pinned() == (non_blocking and dst == "cpu")
    assert not vd.races


@pytest.mark.parametrize("policy,seed", SCHEDULES)
def test_events(policy, seed):
    with so.virtual_device(seed=seed, policy=policy) as vd:
        stream = torch.cuda.current_stream()
        cycles_per_ms = get_cycles_per_ms()
        event = torch.cuda.Event(enable_timing=True)
        assert event.query() is True  # never recorded
        start = torch.cuda.Event(enable_timing=True)
        stream.record_event(start)
        torch.cuda._sleep(int(50 * cycles_per_ms))
        stream.record_event(event)
        with pytest.raises(RuntimeError, match="not completed"):
            start.elapsed_time(event)  # CUDA: not ready
        assert event.query() is False  # 50 ms cannot be over yet
        event.synchronize()
        assert event.query() is True
        assert start.elapsed_time(event) == pytest.approx(50, rel=0.01)
    assert not vd.races


@pytest.mark.parametrize("policy,seed", SCHEDULES)
def test_stream_query_false_while_busy_then_polling_ends(policy, seed):
    with so.virtual_device(seed=seed, policy=policy) as vd:
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            torch.cuda._sleep(int(50 * 1.98e6))
            x = torch.arange(4, device="cuda")
        assert side.query() is False
        polls = 0
        while not side.query():
            polls += 1
            assert polls < 100
        # the host polled until the sleep was over: at least 50 ms of virtual time passed
        assert vd.scheduler.host_time_ns >= 50e6
        with torch.cuda.stream(side):
            assert x.tolist() == [0, 1, 2, 3]
    assert not vd.races


@pytest.mark.parametrize("policy,seed", SCHEDULES)
def test_events_elapsedtime(policy, seed):
    with so.virtual_device(seed=seed, policy=policy) as vd:
        cycles_per_ms = get_cycles_per_ms()
        # consistent with the modelled clock, and measured the same way twice
        assert cycles_per_ms == pytest.approx(SLEEP_CYCLES_PER_NS * 1e6, rel=0.01)
        assert get_cycles_per_ms() == cycles_per_ms
        side = torch.cuda.Stream()
        for ms, stream in ((100, torch.cuda.current_stream()), (20, side)):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record(stream)
            with torch.cuda.stream(stream):
                torch.cuda._sleep(int(cycles_per_ms * ms))
            end.record(stream)
            end.synchronize()
            assert start.elapsed_time(end) == pytest.approx(ms, rel=0.01)
            assert end.elapsed_time(start) == pytest.approx(-ms, rel=0.01)
        # Two streams sleeping at once overlap: the device time is the longer sleep.
        a, b = torch.cuda.Stream(), torch.cuda.Stream()
        begin = torch.cuda.Event(enable_timing=True)
        begin.record()
        a.wait_event(begin)
        b.wait_event(begin)
        ends = []
        for s, ms in ((a, 30), (b, 10)):
            with torch.cuda.stream(s):
                torch.cuda._sleep(int(cycles_per_ms * ms))
            ends.append(s.record_event(torch.cuda.Event(enable_timing=True)))
        torch.cuda.synchronize()
        assert begin.elapsed_time(ends[0]) == pytest.approx(30, rel=0.01)
        assert begin.elapsed_time(ends[1]) == pytest.approx(10, rel=0.05)
    assert not vd.races


@pytest.mark.parametrize("policy,seed", SCHEDULES)
def test_record_stream(policy, seed):
    with so.virtual_device(seed=seed, policy=policy) as vd:
        cycles_per_ms = get_cycles_per_ms()
        t = torch.tensor([1.0, 2.0, 3.0, 4.0]).pin_memory()
        result = torch.empty(t.size(), device="cuda")
        stream = torch.cuda.Stream()
        ptr = []

        def perform_copy():
            with torch.cuda.stream(stream):
                tmp = t.cuda(non_blocking=True)
                ptr.append(tmp.data_ptr())
            torch.cuda.current_stream().wait_stream(stream)
            tmp.record_stream(torch.cuda.current_stream())
            torch.cuda._sleep(int(50 * cycles_per_ms))  # delay the read of tmp
            result.copy_(tmp)

        perform_copy()  # tmp is freed here, still recorded on the sleeping stream
        with torch.cuda.stream(stream):
            tmp2 = torch.empty(t.size(), device="cuda")
            tmp2.zero_()
            assert tmp2.data_ptr() != ptr[0], "allocation reused too soon"
        assert result.tolist() == [1.0, 2.0, 3.0, 4.0]
        torch.cuda.current_stream().synchronize()
        with torch.cuda.stream(stream):
            tmp3 = torch.empty(t.size(), device="cuda")
            assert tmp3.data_ptr() == ptr[0], "allocation not reused"
        del tmp2, tmp3
    assert not vd.races


@pytest.mark.parametrize("policy,seed", SCHEDULES)
def test_record_stream_on_shifted_view(policy, seed):
    with so.virtual_device(seed=seed, policy=policy) as vd:
        cycles_per_ms = get_cycles_per_ms()
        stream_alloc = torch.cuda.Stream()
        with torch.cuda.stream(stream_alloc):
            base = torch.empty(10, device="cuda")
        view = base[5:]
        assert view.storage_offset() > 0
        stream_record = torch.cuda.Stream()
        with torch.cuda.stream(stream_record):
            torch.cuda._sleep(int(50 * cycles_per_ms))
        view.record_stream(stream_record)
        data_ptr = base.data_ptr()
        del base, view
        stream_alloc.synchronize()  # not the recording stream: the block stays held
        with torch.cuda.stream(stream_alloc):
            try_realloc = torch.empty(10, device="cuda")
        assert try_realloc.data_ptr() != data_ptr
        stream_record.synchronize()  # now its work has completed: the block comes back
        with torch.cuda.stream(stream_alloc):
            again = torch.empty(10, device="cuda")
        assert again.data_ptr() == data_ptr
        del try_realloc, again
    assert not vd.races


@pytest.mark.parametrize("policy,seed", SCHEDULES)
def test_record_stream_after_a_query_poll(policy, seed):
    """A True query() completes the recorded work as a sync does: the block comes back."""
    with so.virtual_device(seed=seed, policy=policy) as vd:
        busy = torch.cuda.Stream()
        x = torch.ones(64, device="cuda")
        address = x.data_ptr()
        busy.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(busy):
            torch.cuda._sleep(int(5 * 1.98e6))
            total = x.sum()
        x.record_stream(busy)
        del x
        other = torch.empty(64, device="cuda")
        assert other.data_ptr() != address
        while not busy.query():
            pass
        assert torch.empty(64, device="cuda").data_ptr() == address
        del other
        with torch.cuda.stream(busy):
            assert total.item() == 64.0
    assert not vd.races


TIMING_TESTS = """
import torch


def cycles_per_ms():
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(1_000_000)
    end.record()
    end.synchronize()
    return 1_000_000 / start.elapsed_time(end)


def test_events():
    cpm = cycles_per_ms()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(int(50 * cpm))
    end.record()
    assert not end.query()
    end.synchronize()
    assert end.query()
    assert 49.5 < start.elapsed_time(end) < 50.5


def test_record_stream():
    cpm = cycles_per_ms()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        tmp = torch.ones(100, device="cuda")
    ptr = tmp.data_ptr()
    torch.cuda.current_stream().wait_stream(side)
    tmp.record_stream(torch.cuda.current_stream())
    torch.cuda._sleep(int(50 * cpm))
    total = tmp.sum()
    del tmp
    with torch.cuda.stream(side):
        other = torch.empty(100, device="cuda")
        assert other.data_ptr() != ptr
    assert total.item() == 100.0
    with torch.cuda.stream(side):
        assert torch.empty(100, device="cuda").data_ptr() == ptr
"""


def test_timing_tests_pass_on_every_schedule_the_plugin_explores(pytester):
    pytester.makepyfile(test_timing=TIMING_TESTS)
    result = pytester.runpytest("--streamorder", "--streamorder-schedules=10", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*2 tests checked, 20 schedules explored*0 races found*"])


# --- the scheduler's rules, torch-free ------------------------------------------------

def _sleepy_program(sch: Scheduler, ms: int = 50):
    a, b = sch.new_stream("default"), sch.new_stream("side")
    sleep = Item("_sleep", lambda: None, cost_ns=ms * 1_000_000)
    sch.enqueue(b, sleep)
    mark = EventMark(b)
    sch.enqueue(b, Item("record", None, done_mark=mark, cost_ns=0))
    sch.enqueue(a, Item("small", lambda: None))
    return a, b, sleep, mark


@pytest.mark.parametrize("policy,seed", SCHEDULES)
def test_nothing_completes_before_its_start_plus_its_cost(policy, seed):
    sch = Scheduler(policy, Chooser(seed))
    a, b, sleep, mark = _sleepy_program(sch)
    issued = sleep.issued_ns
    assert not sch.mark_completed(mark) and not sch.completed(sleep)
    assert sch.poll_stream(b) is False
    polls = 0
    while not sch.poll(mark):
        polls += 1
        assert polls < 10
    assert sch.host_time_ns >= issued + 50_000_000
    assert sleep.finish_ns == issued + 50_000_000 and mark.time_ns == sleep.finish_ns
    assert sch.completed(sleep) and sch.stream_completed(b)


@pytest.mark.parametrize("policy", POLICIES)
def test_finish_times_do_not_depend_on_the_policy(policy):
    """Virtual finish times are each item's earliest plausible completion: the same under
    every policy and seed; only when work *runs* (and so what a query sees) differs."""
    def finishes(policy, seed):
        sch = Scheduler(policy, Chooser(seed))
        a, b = sch.new_stream("a"), sch.new_stream("b")
        items = []
        mark = EventMark(a)
        for i in range(6):
            item = Item(f"a{i}", lambda: None, cost_ns=1000 * (i + 1))
            items.append(item)
            sch.enqueue(a, item)
        sch.enqueue(a, Item("record", None, done_mark=mark, cost_ns=0))
        sch.enqueue(b, Item("wait", None, blocked_on=mark, cost_ns=0))
        for i in range(3):
            item = Item(f"b{i}", lambda: None, cost_ns=500)
            items.append(item)
            sch.enqueue(b, item)
        sch.drain_all()
        return [(it.issued_ns, it.finish_ns) for it in items], sch.host_time_ns

    reference = finishes("eager", 0)
    for seed in SEEDS:
        assert finishes(policy, seed) == reference
    times, _ = reference
    assert times[6][1] == times[5][1] + 500  # b waited for a's record


def test_eager_runs_early_but_completes_on_time():
    """Eager computes values at launch; the host still sees the sleep busy until its end."""
    sch = Scheduler("eager", Chooser(0))
    a, b, sleep, mark = _sleepy_program(sch)
    assert sleep.done and mark.done  # values computed already
    assert not sch.completed(sleep) and not sch.mark_completed(mark)
    before = sch.host_time_ns
    assert sch.poll(mark) is False  # moves the host's clock to the record's completion
    assert sch.host_time_ns == mark.time_ns > before
    assert sch.host_blocked_ns == mark.time_ns - before
    assert sch.poll(mark) is True


def test_lazy_query_runs_work_then_sees_it_late():
    sch = Scheduler("lazy", Chooser(0))
    a, b, sleep, mark = _sleepy_program(sch)
    assert not sleep.done
    assert sch.poll_stream(b) is False  # runs one item: the sleep, still busy
    assert sleep.done and not mark.done
    assert sch.poll_stream(b) is False  # runs the record
    assert sch.poll_stream(b) is False  # now all ran: the clock moves to the end
    assert sch.host_time_ns == b.time_ns
    assert sch.poll_stream(b) is True


def test_a_quick_item_may_be_seen_complete_after_a_poll_step():
    """Late is allowed, and so is on time: a query that runs an item whose finish the
    host's clock has passed sees it complete."""
    sch = Scheduler("lazy", Chooser(0))
    a = sch.new_stream("a")
    item = Item("tiny", lambda: None, cost_ns=10)
    sch.enqueue(a, item)
    sch.host_time_ns += 1_000  # host work in between (e.g. other launches)
    assert sch.poll_stream(a) is True
    assert item.done
