"""Explore only what can differ (--streamorder-explore=observed, the default): a test
that observed nothing of the schedule is decided by one adversarial schedule; one that
did gets schedules that flip its observations first. The two constructed cases of issue
15 are caught deterministically, every seed, and only thanks to the flip (one schedule
misses them); the catalogue's mutants are caught at the defaults through the plugin."""

from __future__ import annotations

import pytest
import torch  # noqa: F401  (imported once here: pytester's in-process runs cannot re-import torch)

import torch._dynamo  # noqa: F401  (nor what torch's meta kernels import on first use)

import pytest_streamorder.sim.session  # noqa: F401  (nor the runtime: it registers with torch once)

from pytest_streamorder.scheduling import Item, Scheduler, parse_replay
from pytest_streamorder.scheduling.queues import EventMark
from pytest_streamorder.scheduling.written import Schedule
from reference_impl.mutants import MUTANTS

pytest_plugins = ["pytester"]

ARGS = ("--streamorder", "-p", "no:randomly")

QUERY_TRUE_THEN_FLIPPED = """
import torch

def test_racy_only_when_query_is_false():
    side = torch.cuda.Stream()
    buf = torch.zeros(4, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        buf.add_(1)
    ev = torch.cuda.Event()
    ev.record(side)
    ev.query()                  # a first look
    work = torch.zeros(4, device="cuda")
    for _ in range(8):          # the host goes on: by now the side stream may be done
        work.add_(1)
    if ev.query():
        out = buf.clone()       # ordered: the host saw the event complete
    else:
        out = buf.clone()       # racy: the current stream never waited for ev
    torch.cuda.synchronize()
"""

WRONG_RECORD_STREAM = """
import torch

def test_record_stream_on_the_wrong_stream():
    side, other = torch.cuda.Stream(), torch.cuda.Stream()
    tmp = torch.ones(1024, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = tmp * 2                                 # side reads tmp
    with torch.cuda.stream(other):
        z = torch.ones(4, device="cuda").add_(1)    # other has work in flight
    tmp.record_stream(other)                        # wrong: side is the one using tmp
    del tmp
    work = torch.zeros(4, device="cuda")
    for _ in range(8):
        work.add_(1)
    new = torch.zeros(1024, device="cuda")  # tmp's block, once other's work has finished
    torch.cuda.synchronize()
"""

NO_OBSERVATION = """
import torch

def test_plain_device_work():
    x = torch.ones(4, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        x.mul_(2)
    torch.cuda.current_stream().wait_stream(side)
    assert x.tolist() == [2.0] * 4
"""


@pytest.mark.parametrize("case", [QUERY_TRUE_THEN_FLIPPED, WRONG_RECORD_STREAM],
                         ids=["query-false-path", "wrong-record-stream"])
def test_constructed_cases_are_caught_on_every_seed_by_a_flip(pytester, case):
    pytester.makepyfile(test_case=case)
    for seed in range(4):
        result = pytester.runpytest(*ARGS, f"--streamorder-seed={seed}")
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*StreamRaceError: stream-order race*",
                                     f"*failed on schedule [23] (policy lazy, seed {seed})*"])
    # the first schedule alone does not see it: the flip of what it observed does
    pytester.runpytest(*ARGS, "--streamorder-schedules=1").assert_outcomes(passed=1)


def test_a_flipped_schedule_replays_from_its_token(pytester):
    pytester.makepyfile(test_case=QUERY_TRUE_THEN_FLIPPED)
    result = pytester.runpytest(*ARGS)
    result.assert_outcomes(failed=1)
    line = next(ln for ln in result.outlines if "--streamorder-replay=" in ln)
    token = line.split("--streamorder-replay=")[1].split()[0]
    assert parse_replay(token).flips  # the flip is part of the written schedule
    again = pytester.runpytest(*ARGS, f"--streamorder-replay={token}")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*failed on schedule 1 (policy lazy, seed 0)*"])


def test_a_test_that_observed_nothing_runs_one_schedule_and_says_so(pytester):
    pytester.makepyfile(test_plain=NO_OBSERVATION)
    result = pytester.runpytest(*ARGS, "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*Captured streamorder call*", "1 schedule(s), * device ops, 0 race(s)",
        "1 schedule: no timing-dependent observation",
        "*1 tests checked, 1 schedules explored*",
        "1 of them decided by 1 schedule (no timing-dependent observation*"])
    forced = pytester.runpytest(*ARGS, "--streamorder-explore=random",
                                "--streamorder-schedules=5")
    forced.assert_outcomes(passed=1)
    forced.stdout.fnmatch_lines(["*1 tests checked, 5 schedules explored*"])
    assert "decided by 1 schedule" not in forced.stdout.str()


def test_observations_get_the_rest_of_the_budget(pytester):
    """A query observed: flips first, then random schedules, up to the budget."""
    pytester.makepyfile(test_case=QUERY_TRUE_THEN_FLIPPED.replace(
        "        out = buf.clone()       # racy", "        torch.cuda.current_stream().wait_event(ev)\n"
        "        out = buf.clone()       # fixed"))
    result = pytester.runpytest(*ARGS, "--streamorder-schedules=6")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 tests checked, 6 schedules explored*"])


def test_a_bad_explore_value_names_its_source(pytester):
    pytester.makepyfile(test_plain=NO_OBSERVATION)
    result = pytester.runpytest(*ARGS, "--streamorder-explore=all")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: flag --streamorder-explore=all: explore must be one of "
                                 "observed, random*"])


MUTANT_SUITE = """
import random
import pytest
from reference_impl.mutants import MUTANTS

@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant(name):
    rng = random.Random(sorted(MUTANTS).index(name))
    loop = MUTANTS[name].make_loop(8, device="cuda")
    for slot in range(1, 8):
        loop.admit(slot, rng.randint(1, 9))
    for step in range(12):
        live = sorted(loop.live_slots)
        if step % 3 == 2 and live:
            slot = rng.choice(live)
            loop.free(slot)
            loop.admit(slot, rng.randint(1, 9))
            live = sorted(loop.live_slots)
        batch = [] if step % 5 == 4 else rng.sample(live, rng.randint(1, len(live)))
        result = loop.step(batch, [rng.randint(0, 3) for _ in batch], spec=step % 4 != 3)
        if result is not None:
            result.check()
    for r in loop.synchronize():
        r.check()
"""


def test_every_mutant_is_caught_at_the_defaults(pytester):
    pytester.makepyfile(test_mutants=MUTANT_SUITE)
    result = pytester.runpytest(*ARGS, "-q")
    result.assert_outcomes(failed=len(MUTANTS))


# --- the scheduler's side, torch-free --------------------------------------------------

def _one_op(policy="lazy", flips=()):
    scheduler = Scheduler(policy)
    scheduler.flips = frozenset(flips)
    stream = scheduler.new_stream("side")
    mark = EventMark(stream)
    scheduler.enqueue(stream, Item("op", done_mark=mark, cost_ns=100))
    return scheduler, mark


def test_a_query_flips_either_way_only_where_the_model_allows_it():
    scheduler, mark = _one_op()
    scheduler.host_time_ns += 2000  # the host's clock passes the op's finish
    assert scheduler.poll(mark, lambda: False) is True  # lazy: the poll's one step ran it
    scheduler, mark = _one_op(flips=(0,))
    scheduler.host_time_ns += 2000
    assert scheduler.poll(mark, lambda: False) is False  # late, as far as the host knows
    assert [o.flipped for o in scheduler.observations] == [True]
    scheduler, mark = _one_op(flips=(0,))
    scheduler.host_time_ns += 2000
    assert scheduler.poll(mark, lambda: True) is True  # the host is ordered after it
    assert [o.flipped for o in scheduler.observations] == [False]
    scheduler, mark = _one_op(flips=(0,))
    mark.stream.queue[0].cost_ns = 10**9  # finishes long after the host's clock
    assert scheduler.poll(mark, lambda: False) is False
    assert [o.flipped for o in scheduler.observations] == [False]  # True: impossibly early
    scheduler, mark = _one_op(flips=(0,))
    scheduler.host_time_ns += 50  # not passed yet: the natural answer is False...
    scheduler.rule = type(scheduler.rule)(scheduler.rule.choose)
    other = scheduler.new_stream("before")  # ...and the op waits behind another stream's
    first = EventMark(other)
    scheduler.enqueue(other, Item("first", done_mark=first, cost_ns=0))
    mark.stream.queue[0].blocked_on = first
    scheduler.host_time_ns += 5000
    assert scheduler.poll(mark, lambda: False) is True  # flipped: both ran, in time
    assert [o.flipped for o in scheduler.observations] == [True]


def test_reuse_flips_only_to_reuse_and_only_in_time():
    scheduler, mark = _one_op()
    item = mark.stream.last
    assert scheduler.reusable([item]) is False  # lazy: not run
    scheduler, mark = _one_op(flips=(0,))
    item = mark.stream.last
    scheduler.host_time_ns += 10_000
    assert scheduler.reusable([item]) is True and scheduler.observations[0].flipped


def test_threads_and_unseen_accesses_are_notes():
    scheduler, _ = _one_op()
    scheduler.note("data_ptr")
    scheduler.note("data_ptr")  # once in a row
    assert [(o.kind, o.steerable) for o in scheduler.observations] == [("data_ptr", False)]


def test_flips_round_trip_in_the_written_form():
    schedule = Schedule("lazy", 3, (1, 0), (2, 2), flips=(7, 2))
    again = parse_replay(schedule.token)
    assert again == schedule and again.flips == (2, 7)
    assert parse_replay(Schedule("lazy", 3, (1, 0), (2, 2)).token).flips == ()
