"""pytest_streamorder.strategies itself: what the strategies generate, and how they fail
on bad arguments. Fast: no device work except where a test says so."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from pytest_streamorder import strategies as sos
from pytest_streamorder.strategies import (
    Admit, Free, Reuse, Step, Sync, ToggleSpec, accept_lens, overlap_machine, overlap_programs,
    request_pool_indices, run_program,
)


# Strategies need no device; the tests that run programs open their own devices.
pytestmark = pytest.mark.no_streamorder


@given(st.data(), st.integers(2, 12))
def test_batches_hold_unique_request_slots(data, pool_size):
    batch = data.draw(request_pool_indices(pool_size))
    assert isinstance(batch, tuple)
    assert len(set(batch)) == len(batch)
    assert all(1 <= i < pool_size for i in batch), "slot 0 is padding and never drawn"
    assert len(batch) <= pool_size - 1


@given(st.data())
def test_batches_respect_bounds_and_given_slots(data):
    slots = data.draw(st.sets(st.integers(1, 9), min_size=1))
    lo = data.draw(st.integers(0, len(slots)))
    hi = data.draw(st.integers(lo, len(slots)))
    batch = data.draw(request_pool_indices(10, slots=slots, min_size=lo, max_size=hi))
    assert lo <= len(batch) <= hi
    assert set(batch) <= slots


def test_every_edge_size_is_reached():
    # 0 (DP idle), 1, small, and the whole pool (7 request slots of a pool of 8)
    sizes = set()

    @settings(max_examples=200, database=None)
    @given(request_pool_indices(8))
    def collect(batch):
        sizes.add(len(batch))

    collect()
    assert {0, 1, 2, 3, 7} <= sizes


@pytest.mark.parametrize("call, message", [
    (lambda: request_pool_indices(1), "pool_size must be at least 2"),
    (lambda: request_pool_indices(0), "slot 0 is the padding row"),
    (lambda: request_pool_indices(8, max_size=8), "larger than the pool: pool_size=8 holds 7"),
    (lambda: request_pool_indices(4, min_size=5), "min_size=5 is larger than the pool"),
    (lambda: request_pool_indices(8, slots=[1, 2], max_size=3), "larger than the 2 slots"),
    (lambda: request_pool_indices(8, slots=[0, 3]), "slots [0] are not request slots"),
    (lambda: request_pool_indices(8, min_size=3, max_size=2), "min_size=3 is larger than max_size=2"),
    (lambda: request_pool_indices(True), "pool_size must be an int"),
    (lambda: overlap_programs(1), "pool_size must be at least 2"),
    (lambda: overlap_programs(4, spec_mode="sometimes"), "spec_mode must be one of"),
    (lambda: overlap_machine(pool_size=1), "pool_size must be at least 2"),
    (lambda: overlap_machine(policies=["chaos"]), "policies must be a non-empty subset"),
    (lambda: overlap_machine(device="tpu"), "device must be one of"),
    (lambda: accept_lens(2, min_accept=3, max_accept=1), "min_accept=3 is larger than max_accept=1"),
    (lambda: sos.policies(["eager", "fifo"]), "policies must be a non-empty subset"),
])
def test_bad_arguments_raise_invalid_argument(call, message):
    with pytest.raises(InvalidArgument) as info:
        call()
    assert message in str(info.value)


def _live_after(program):
    """Replays a program's slot bookkeeping; fails if an op is invalid."""
    live = set()
    for op in program.ops:
        if isinstance(op, Admit):
            assert op.slot not in live and 0 < op.slot < program.pool_size
            live.add(op.slot)
        elif isinstance(op, Free):
            live.remove(op.slot)
        elif isinstance(op, Reuse):
            assert op.slot in live
        elif isinstance(op, Step):
            assert set(op.indices) <= live and len(set(op.indices)) == len(op.indices)
            assert len(op.accept_lens) == len(op.indices) and min(op.accept_lens, default=1) >= 1
    return live


@given(overlap_programs(6))
def test_programs_are_valid_by_construction(program):
    _live_after(program)
    if program.spec_mode != "mixed":
        assert not any(isinstance(op, ToggleSpec) for op in program.ops)


@settings(max_examples=25)
@given(overlap_programs(5, max_ops=12))
def test_programs_run_on_cpu_without_streams(program):
    # cpu is eager: every value is right; this checks the interpreter and the oracle
    run_program(program, device="cpu")


def test_programs_reach_every_kind_of_op():
    seen = set()

    @settings(max_examples=200, database=None)
    @given(overlap_programs(6, max_ops=30))
    def collect(p):
        seen.update(type(op).__name__ for op in p.ops)
        seen.update("idle" for op in p.ops if isinstance(op, Step) and op.idle)
        seen.update("same slot" for a, b in zip(p.ops, p.ops[1:])
                    if isinstance(a, Step) and isinstance(b, Step) and len(a.indices) == 1
                    and a.indices == b.indices)
        seen.add(p.spec_mode)

    collect()
    assert {"Admit", "Free", "Reuse", "Step", "Sync", "ToggleSpec", "idle", "same slot",
            "on", "off", "mixed"} <= seen


def test_policies_agree_with_the_scheduler():
    from pytest_streamorder.scheduling import POLICIES

    assert sos.POLICIES == POLICIES


def test_importing_strategies_does_not_import_torch():
    code = ("import sys, pytest_streamorder.strategies as s; "
            "s.request_pool_indices(8); s.overlap_programs(8); s.overlap_machine(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=10)
@given(overlap_programs(5, max_ops=8), sos.schedules(["random", "pct", "delay"]))
def test_a_schedule_drawn_from_hypothesis_replays_exactly(program, schedule):
    """The choices a HypothesisChooser drew replay exactly through the seeded Chooser, as
    `virtual_device(replay=vd.schedule)` does."""
    from pytest_streamorder.scheduling import Chooser

    first = run_program(program, schedule, device="virtual")
    recorded = first.vd.schedule
    assert recorded.policy == schedule.policy
    assert list(recorded.choices) == schedule.chooser.choices

    replayed = sos.DrawnSchedule(schedule.policy, Chooser(None, replay=list(recorded.choices)))
    again = run_program(program, replayed, device="virtual")
    assert again.vd.schedule == recorded
    assert again.vd.ops_issued == first.vd.ops_issued


def test_chooser_draws_nothing_once_the_test_case_is_over():
    """Work still queued when an example ended (it failed, or its data overran) runs
    without drawing: a draw from concluded data raised Hypothesis' `Frozen`, which hid
    how the example ended (a flake of the reference suite)."""
    from hypothesis.internal.conjecture.data import ConjectureData

    from pytest_streamorder.strategies import HypothesisChooser

    data = ConjectureData.for_choices([2, 1])
    chooser = HypothesisChooser(data)
    assert chooser.choose(4) == 2
    data.freeze()
    assert chooser.choose(4) == 0 and chooser.frozen
    assert chooser.choices == [2, 0]
