"""reference_impl on device="cpu" (eager): the loop agrees with the oracle, bad input is
rejected by name, and every broken variant still agrees with the oracle (its bug needs
real asynchrony to show), and the mutant catalogue covers DESIGN.md's bug classes."""

from __future__ import annotations

import dataclasses
import inspect
import random
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl import (
    BUG_CLASSES,
    MUTANTS,
    REFERENCE,
    FutureMap,
    Mutant,
    OverlapLoop,
    ScheduleBatch,
    SpecAlgorithm,
    SpecInfo,
    device_has_streams,
)

POOL = 8


def drive(loop: OverlapLoop, seed: int, steps: int, sync_every: int = 37) -> Counter:
    """Random steps with churn; checks every result against the oracle. Returns counts of
    the situations it exercised, so tests can assert they were reached."""
    rng = random.Random(seed)
    seen: Counter = Counter()
    prev: list[int] = []
    ever_used: set[int] = set()
    for k in range(steps):
        fresh = set()
        for s in loop.live_slots:
            if rng.random() < 0.12:
                loop.free(s)
        for s in loop.free_slots:
            if rng.random() < 0.3:
                loop.admit(s, rng.randrange(0, 100))
                fresh.add(s)
                if s in ever_used:
                    seen["slot reused"] += 1
        live = loop.live_slots
        r = rng.random()
        if r < 0.12 or not live:
            batch = []
        elif r < 0.35 and any(s in live for s in prev):
            batch = [s for s in prev if s in live]  # same slots again (chunked prefill)
            seen["same slots as previous step"] += 1
        else:
            batch = rng.sample(live, rng.randint(1, len(live)))
        accept = [rng.randint(0, 5) for _ in batch]
        spec = rng.random() < 0.65
        result = loop.step(batch, accept, spec=spec)
        result.check()
        assert result.host_ok
        seen["idle" if not batch else "busy", "spec" if spec else "spec-off"] += 1
        if spec and fresh & set(batch):
            seen["spec step on a fresh request"] += 1
        ever_used.update(batch)
        prev = batch
        if k % sync_every == sync_every - 1:
            for r_ in loop.synchronize():
                r_.check()
                assert r_.device_ok
            assert loop.device_seq_lens() == {s: loop.oracle.lens[s] for s in loop.live_slots}
    for r_ in loop.finish():
        r_.check()
        assert r_.device_ok
    return seen


# ------------------------------------------------------------------ the reference


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_oracle_over_many_steps(seed):
    loop = OverlapLoop(POOL, device="cpu")
    seen = drive(loop, seed, steps=300)
    for situation in [
        ("idle", "spec"), ("idle", "spec-off"), ("busy", "spec"), ("busy", "spec-off"),
        "slot reused", "same slots as previous step", "spec step on a fresh request",
    ]:
        assert seen[situation] > 0, f"driver never reached {situation!r}: {seen}"


def test_reference_with_coarse_war_barrier_matches_oracle():
    drive(OverlapLoop(POOL, device="cpu", coarse_war_barrier=True), seed=2, steps=100)


def test_spec_algo_none_runs_spec_off_steps():
    loop = OverlapLoop(4, spec_algo=SpecAlgorithm.NONE)
    loop.admit(1, 10)
    for _ in range(3):
        loop.step([1], [2], spec=False).check()
    assert loop.future_map.publish_ready is None  # no spec: publish records nothing
    assert loop.device_seq_lens() == {1: 16}


def test_chunked_prefill_and_slot_reuse_by_hand():
    loop = OverlapLoop(3)
    loop.admit(1, 0)
    for chunk in (16, 16, 5):  # the same slot in consecutive steps
        loop.step([1], [chunk], spec=False).check()
    r = loop.step([1], [1], spec=True)
    assert r.seq_lens_cpu == [37] and r.seq_lens_sum == 37
    loop.free(1)
    loop.admit(1, 4)  # reused at once by a new request; its first step is spec
    r = loop.step([1], [2], spec=True)
    assert r.seq_lens_cpu == r.expected_seq_lens == [4]
    r = loop.step([1], [0], spec=True)
    assert r.seq_lens_cpu == [6]
    [_, _, _, _, _, last] = loop.finish()
    assert last.seq_lens == [6]


def test_idle_steps_keep_state():
    loop = OverlapLoop(4)
    loop.admit(2, 7)
    loop.step([2], [3])
    ready = loop.future_map.publish_ready
    for spec in (True, False, True):
        r = loop.step([], [], spec=spec)
        assert r.seq_lens_cpu == [] and r.seq_lens_sum == 0
    assert loop.future_map.publish_ready is ready  # DP idle: publish returned early
    assert loop.step([2], [0]).seq_lens_cpu == [10]


def test_cpu_has_no_streams_events_or_pinned_memory():
    loop = OverlapLoop(4, device="cpu")
    assert not device_has_streams("cpu") and device_has_streams("cuda")
    assert loop.schedule_stream is None and loop.forward_stream is None
    assert loop.inputs_ready is None and loop.read_done is None and loop.fwd_done is None
    assert loop.future_map.fwd_prepare_d2h_stream is None
    assert not loop.staging.is_pinned()


# ----------------------------------------------------------------- FutureMap alone


def test_future_map_attributes_on_cpu():
    fm = FutureMap(5, "cpu", SpecAlgorithm.EAGLE)
    assert fm.device == torch.device("cpu")
    assert fm.new_seq_lens_buf.dtype == torch.int64 and fm.new_seq_lens_buf.shape == (5,)
    assert fm.new_seq_lens_buf.tolist() == [0] * 5
    assert fm.new_seq_lens_cpu_pinned.device.type == "cpu"
    assert not fm.new_seq_lens_cpu_pinned.is_pinned()
    assert fm.fwd_prepare_d2h_stream is None
    assert fm.publish_ready is None
    assert fm.spec_algo.is_some() and SpecAlgorithm.NONE.is_none()


def test_future_map_publish_and_resolve():
    fm = FutureMap(5, "cpu", SpecAlgorithm.EAGLE)
    fm.publish(torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64))
    assert fm.publish_ready is None  # DP idle: early return, no event
    fm.publish(torch.tensor([1, 3]), torch.tensor([7, 9], dtype=torch.int32))
    assert fm.publish_ready is not None
    assert fm.new_seq_lens_buf.tolist() == [0, 7, 0, 9, 0]
    idx = torch.tensor([3, 1])
    batch = ScheduleBatch(req_pool_indices=idx, req_pool_indices_cpu=idx.clone(),
                          spec_info=SpecInfo(future_indices=idx))
    fm.resolve_seq_lens_cpu(batch)
    assert batch.seq_lens.tolist() == [9, 7]
    assert batch.seq_lens_cpu.tolist() == [9, 7] and batch.seq_lens_sum == 16


def test_future_map_resolve_without_spec_is_a_no_op():
    fm = FutureMap(3, "cpu", SpecAlgorithm.EAGLE)
    idx = torch.tensor([1])
    for spec_info in (None, SpecInfo(future_indices=None)):
        batch = ScheduleBatch(req_pool_indices=idx, req_pool_indices_cpu=idx, spec_info=spec_info)
        fm.resolve_seq_lens_cpu(batch)
        assert batch.seq_lens is None and batch.seq_lens_cpu is None and batch.seq_lens_sum is None


def test_future_map_without_spec_records_no_event():
    fm = FutureMap(3, "cpu", SpecAlgorithm.NONE)
    fm.publish(torch.tensor([1]), torch.tensor([4]))
    assert fm.publish_ready is None and fm.new_seq_lens_buf.tolist() == [0, 4, 0]


# ---------------------------------------------------------------------- bad input


def _loop_with_requests() -> OverlapLoop:
    loop = OverlapLoop(POOL)
    loop.admit(1, 10)
    loop.admit(2, 20)
    return loop


BAD_INPUTS = {
    "pool of 1": (lambda: OverlapLoop(1), r"pool_size must be at least 2"),
    "pool of 0": (lambda: OverlapLoop(0), r"pool_size must be at least 2"),
    "index past the pool": (lambda: _loop_with_requests().step([1, POOL], [1, 1]),
                            r"index 8 is outside the pool"),
    "negative index": (lambda: _loop_with_requests().step([-1], [1]),
                       r"index -1 is outside the pool"),
    "padding slot": (lambda: _loop_with_requests().step([0], [1]), r"index 0 is the padding slot"),
    "duplicate index": (lambda: _loop_with_requests().step([1, 2, 1], [1, 1, 1]),
                        r"duplicate index 1 in one batch"),
    "negative accept length": (lambda: _loop_with_requests().step([1, 2], [1, -3]),
                               r"negative length -3 in accept_lens"),
    "negative initial length": (lambda: _loop_with_requests().admit(3, -1),
                                r"negative length -1 for slot 3"),
    "mismatched shapes": (lambda: _loop_with_requests().step([1, 2], [1]),
                          r"shape mismatch: len\(indices\)=2 != len\(accept_lens\)=1"),
    "slot with no request": (lambda: _loop_with_requests().step([1, 3], [1, 1]),
                             r"slot 3 holds no request"),
    "free a free slot": (lambda: _loop_with_requests().free(3), r"slot 3 holds no request"),
    "admit a busy slot": (lambda: _loop_with_requests().admit(2, 5),
                          r"slot 2 already holds a request"),
    "admit outside the pool": (lambda: _loop_with_requests().admit(POOL, 5),
                               r"index 8 is outside the pool"),
    "admit the padding slot": (lambda: _loop_with_requests().admit(0, 5),
                               r"index 0 is the padding slot"),
    "non-int index": (lambda: _loop_with_requests().step([1.5], [1]), r"indices must be ints"),
    "spec without a spec algorithm": (
        lambda: OverlapLoop(4, spec_algo=SpecAlgorithm.NONE).step([], [], spec=True),
        r"spec step on a loop built with SpecAlgorithm.NONE"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_the_problem(case):
    action, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        action()


def test_rejected_step_leaves_the_loop_usable():
    loop = _loop_with_requests()
    loop.step([1], [1]).check()
    with pytest.raises(ValueError):
        loop.step([1, 1], [1, 1])
    with pytest.raises(ValueError):
        loop.step([1, 5], [1, 1])
    r = loop.step([1, 2], [0, 0])
    assert r.seq_lens_cpu == [11, 20]
    r.check()


# ------------------------------------------------------------------------ mutants


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_hides_on_cpu_eager(name):
    """Every bug is an ordering bug: with eager execution it computes the right values."""
    drive(MUTANTS[name].make_loop(POOL, device="cpu"), seed=sorted(MUTANTS).index(name), steps=120)


DESIGN_BUG_CLASSES = [
    "D2H not gated on the publish event",
    "host reads the pinned buffer before the D2H stream is synced",
    "schedule-stream gather without waiting the publish event",
    "event recorded before the write it should fence",
    "event re-recorded on another stream drops the first fence",
    "wait issued before the record it meant to wait on",
    "schedule stream rewrites a slot forward n still reads",
    "temporary freed without record_stream and reused",
    "pinned staging buffer overwritten before its H2D copy ran",
    "stale event used on spec-off or DP-idle steps",
    "default-stream init raced by a side stream",
    "offset-view writes",
]

CITED = {  # DESIGN.md cites these real bugs for their classes
    "rerecord_drops_fence": ["#30435"],
    "missing_war_barrier": ["#26380", "#18744"],
    "no_record_stream": ["#34076"],
    "staging_overwritten": ["#24527"],
    "stale_event_on_spec_off": ["#34866"],
}


def test_catalogue_covers_every_bug_class():
    assert sorted(BUG_CLASSES) == sorted(DESIGN_BUG_CLASSES)
    assert sorted(BUG_CLASSES.values()) == sorted(MUTANTS), "one mutant per bug class"
    for name, refs in CITED.items():
        for ref in refs:
            assert ref in MUTANTS[name].mirrors, (name, ref)


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_each_mutant_is_one_small_override(name):
    m = MUTANTS[name]
    assert m.name == name and m.drops and m.mirrors
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.name = "x"  # type: ignore[misc]
    changed = [cls for cls, base in ((m.future_map_cls, FutureMap), (m.loop_cls, OverlapLoop))
               if cls is not base]
    assert len(changed) == 1, "a mutant changes one class"
    [cls] = changed
    assert issubclass(cls, (FutureMap, OverlapLoop)) and cls.__doc__
    overridden = [k for k, v in vars(cls).items() if inspect.isfunction(v)]
    assert len(overridden) == 1, f"{cls.__name__} overrides {overridden}"
    assert hasattr(cls.__mro__[1], overridden[0]), "it overrides, not adds"
    assert "BUG" in inspect.getsource(cls), "the changed line is marked"


def test_reference_entry():
    assert isinstance(REFERENCE, Mutant)
    assert REFERENCE.future_map_cls is FutureMap and REFERENCE.loop_cls is OverlapLoop
    assert REFERENCE.name not in MUTANTS


# ---------------------------------------------------------------------- Hypothesis

action = st.tuples(
    st.sampled_from(["admit", "free", "step", "idle", "sync"]),
    st.integers(1, POOL - 1),
    st.lists(st.integers(0, 5), max_size=POOL),
    st.booleans(),
)


@settings(max_examples=30, deadline=None)
@given(st.lists(action, max_size=25))
def test_random_action_sequences_match_oracle(actions):
    loop = OverlapLoop(POOL)
    for kind, slot, nums, spec in actions:
        if kind == "admit" and slot not in loop.live_slots:
            loop.admit(slot, nums[0] if nums else 0)
        elif kind == "free" and slot in loop.live_slots:
            loop.free(slot)
        elif kind == "step":
            live = loop.live_slots
            batch = live[: len(nums)]
            loop.step(batch, nums[: len(batch)], spec=spec).check()
        elif kind == "idle":
            loop.step([], [], spec=spec).check()
        elif kind == "sync":
            for r in loop.synchronize():
                r.check()
    loop.step([], [], spec=False)  # seeds requests admitted since the last step
    for r in loop.finish():
        r.check()
    assert loop.device_seq_lens() == loop.oracle.lens
