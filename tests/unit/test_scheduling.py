"""The scheduler and its policies, torch-free: queues of plain callables.

What each policy may run when, that every decision comes from the Chooser (so a run
replays), that pct learns the run length, and that a replay that goes another way says
where and why.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

from pytest_streamorder.scheduling import (POLICIES, Chooser, EventMark, Item, Policy,
                                           Scheduler, ScheduleDiverged, make_policy)
from pytest_streamorder.scheduling.policies import Pct

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "pytest_streamorder"


def launch(sch: Scheduler, stream, log: list, label: str, **kw) -> Item:
    item = Item(label, lambda: log.append(label), **kw)
    sch.enqueue(stream, item)
    return item


def two_streams(policy: str, seed: int = 0, chooser=None):
    sch = Scheduler(policy, chooser or Chooser(seed))
    return sch, sch.new_stream("default"), sch.new_stream("side")


# --- the interface ---------------------------------------------------------------------

def test_one_class_per_policy_behind_one_interface():
    assert POLICIES == ("eager", "lazy", "random", "pct", "delay")
    for name in POLICIES:
        rule = make_policy(name, Chooser(0).choose)
        assert isinstance(rule, Policy) and rule.name == name
        assert Scheduler(name).rule.name == name
    with pytest.raises(ValueError, match=r"unknown scheduling policy 'fifo'.*eager"):
        make_policy("fifo", Chooser(0).choose)
    with pytest.raises(ValueError, match="unknown scheduling policy 'fifo'"):
        Scheduler("fifo")


def test_eager_runs_at_launch_lazy_only_when_the_host_waits():
    log: list = []
    sch, a, b = two_streams("eager")
    launch(sch, a, log, "a1")
    launch(sch, b, log, "b1")
    assert log == ["a1", "b1"] and sch.steps == 2

    log = []
    sch, a, b = two_streams("lazy")
    launch(sch, a, log, "a1")
    launch(sch, b, log, "b1")
    launch(sch, a, log, "a2")
    assert log == []
    sch.drain(b)  # only what the host waits for
    assert log == ["b1"]
    sch.drain_all()
    assert log == ["b1", "a1", "a2"]
    assert sch.chooser.choices == []  # neither policy draws anything


def test_a_wait_runs_only_after_the_record_it_waits_for():
    for policy in POLICIES:
        for seed in range(20):
            log: list = []
            sch, a, b = two_streams(policy, seed)
            mark = EventMark(a)
            launch(sch, a, log, "write")
            sch.enqueue(a, Item("record", None, done_mark=mark, cost_ns=0))
            sch.enqueue(b, Item("wait", None, blocked_on=mark, cost_ns=0))
            launch(sch, b, log, "read")
            sch.drain(b)
            assert log.index("write") < log.index("read"), (policy, seed)
            assert mark.done


def test_delay_holds_one_stream_back_until_the_host_waits_for_it():
    # Seeds whose held stream is 'side' (index 1): it runs only when the host needs it.
    held_side = [s for s in range(40) if Chooser(s).choose(4) == 1]
    assert held_side
    for seed in held_side:
        log: list = []
        sch, a, b = two_streams("delay", seed)
        assert sch.rule.held == 1
        launch(sch, b, log, "b1")
        launch(sch, a, log, "a1")
        launch(sch, a, log, "a2")
        assert log == ["a1", "a2"]
        sch.drain(b)
        assert log == ["a1", "a2", "b1"]


def test_random_draws_one_more_option_than_ready_streams():
    log: list = []
    sch, a, b = two_streams("random", 3)
    launch(sch, a, log, "a1")
    launch(sch, b, log, "b1")
    sch.drain_all()
    ch = sch.chooser
    assert ch.options[0] == 2  # one ready stream, or stop
    assert sorted(log) == ["a1", "b1"]
    assert len(ch.choices) == len(ch.options) and all(0 <= c < n for c, n in zip(ch.choices, ch.options))


def test_a_foreign_chooser_is_asked_without_reasons():
    """strategies.HypothesisChooser (and any chooser) only has choose(n)."""
    class Plain:
        def __init__(self):
            self.choices = []

        def choose(self, n):
            self.choices.append(n - 1)
            return n - 1

    sch, a, b = two_streams("random", chooser=Plain())
    log: list = []
    launch(sch, a, log, "a1")
    assert log == []  # n - 1 = "stop": the host goes on
    sch.drain_all()
    assert log == ["a1"]


# --- same seed, same schedule; replay ---------------------------------------------------

def program(sch: Scheduler, n: int = 40, streams: int = 3) -> list:
    """A fixed program: launches round robin, a record/wait edge, syncs now and then."""
    log: list = []
    qs = [sch.new_stream(f"s{i}") for i in range(streams)]
    for i in range(n):
        launch(sch, qs[i % streams], log, f"op{i}")
        if i % 7 == 3:
            mark = EventMark(qs[0])
            sch.enqueue(qs[0], Item("record", None, done_mark=mark, cost_ns=0))
            sch.enqueue(qs[1], Item("wait", None, blocked_on=mark, cost_ns=0))
        if i % 11 == 10:
            sch.drain(qs[i % streams])
    sch.drain_all()
    return log


@pytest.mark.parametrize("policy", POLICIES)
def test_same_seed_same_order_and_replay_is_exact(policy):
    for seed in range(10):
        first = Scheduler(policy, Chooser(seed))
        order = program(first)
        assert program(Scheduler(policy, Chooser(seed))) == order
        ch = first.chooser
        again = Scheduler(policy, Chooser(None, replay=ch.choices, replay_options=ch.options))
        assert program(again) == order
        assert again.chooser.choices == ch.choices and again.chooser.unused() == 0


def test_seeds_give_different_orders():
    for policy in ("random", "pct", "delay"):
        orders = {tuple(program(Scheduler(policy, Chooser(s)))) for s in range(20)}
        assert len(orders) >= 2, policy


# --- pct learns the run length ------------------------------------------------------------

def test_pct_draws_change_points_in_each_doubled_window():
    sch = Scheduler("pct", Chooser(5))
    rule = sch.rule
    assert isinstance(rule, Pct) and rule.horizon == 64 and len(rule.change_points) == 2
    program(sch, n=300)
    steps = sch.steps
    assert steps > 256
    assert rule.horizon == 512  # 64 -> 128 -> 256 -> 512: the first power past the run
    # Two change points per window: [0, 64), [64, 128), [128, 256), [256, 512).
    windows = [o for o in sch.chooser.options if o != 1000]  # 1000: stream priorities
    assert windows == [64, 64, 64, 64, 128, 128, 256, 256]
    assert all(cp >= 256 for cp in rule.change_points)  # those not reached yet


def test_pct_change_points_reach_the_end_of_a_long_run():
    """With a fixed 64-step horizon no priority changed after step 64; now, over seeds, a
    good share of runs demote a stream in the second half of a 600-step run."""
    late = 0
    for seed in range(40):
        sch = Scheduler("pct", Chooser(seed))
        demoted_at = []
        demote = sch.rule._demote_top

        def spy(streams, sch=sch, demote=demote, demoted_at=demoted_at):
            demoted_at.append(sch.steps)
            demote(streams)

        sch.rule._demote_top = spy
        program(sch, n=600)
        late += any(step > sch.steps // 2 for step in demoted_at)
    assert late >= 10


def test_pct_change_points_at_one_step_both_fire():
    """A duplicate (or step-0) change point once blocked every later one for the run."""
    rule = Pct(Chooser(0).choose)
    rule.change_points = [0, 5, 5, 9]
    rule.priority = [0.9, 0.8, 0.7]

    class S:
        def __init__(self, i):
            self.index = i

    streams = [S(i) for i in range(3)]
    fired = []
    for step in range(1, 12):
        before = list(rule.change_points)
        rule.after_step(step, streams)
        fired += [step] * (len(before) - len([c for c in rule.change_points if c in before]))
    assert fired == [1, 5, 5, 9]


# --- a replay that diverges says where and why ----------------------------------------------

def test_replay_of_another_program_diverges_at_the_first_differing_step():
    first = Scheduler("random", Chooser(1))
    program(first, n=30, streams=3)
    ch = first.chooser
    other = Scheduler("random", Chooser(None, replay=ch.choices, replay_options=ch.options))
    with pytest.raises(ScheduleDiverged) as info:
        program(other, n=30, streams=2)  # one stream fewer: fewer options somewhere
    exc = info.value
    msg = str(exc)
    assert f"choice #{exc.step}" in msg
    assert f"the recorded run chose {ch.choices[exc.step]} of {ch.options[exc.step]} options here" in msg
    assert "this run has" in msg and "random:" in msg and "ready streams now: 's0'" in msg
    assert other.chooser.choices == ch.choices[:exc.step]  # everything before it matched


def test_a_value_out_of_range_diverges_without_recorded_options():
    ch = Chooser(None, replay=[4])
    with pytest.raises(ScheduleDiverged, match=r"choice #0 \(why\): the recorded run chose 4 "
                                               r"here, this run has only 3 options"):
        ch.choose(3, "why")


def test_a_replay_asked_for_more_choices_than_recorded():
    ch = Chooser(None, replay=[1], replay_options=[2])
    assert ch.choose(2, "x") == 1
    with pytest.raises(ScheduleDiverged, match=r"choice #1 \(y\): the recorded run made only "
                                               r"1 choice\(s\), this run asks for another, "
                                               r"among 5 options"):
        ch.choose(5, "y")


def test_unused_choices_are_detected():
    ch = Chooser(None, replay=[1, 0, 2], replay_options=[2, 2, 3])
    assert ch.unused() == 3
    ch.choose(2)
    assert ch.unused() == 2
    with pytest.raises(ScheduleDiverged, match=r"choice #1 \(end of the run\): the run ended "
                                               r"after 1 of the 3 recorded choices; 2 were "
                                               r"never asked for"):
        ch.check_finished()
    assert Chooser(3).unused() == 0
    Chooser(3).check_finished()  # not replaying: nothing to check
    with pytest.raises(ValueError):
        Chooser(None, replay=[1], replay_options=[2, 2])


def test_one_option_is_not_a_decision():
    ch = Chooser(None, replay=[])
    assert ch.choose(1) == 0 and ch.choose(0) == 0
    assert ch.choices == [] and ch.options == []


# --- dependencies ---------------------------------------------------------------------------

def test_scheduling_imports_no_torch_and_no_backend():
    code = ("import sys, pytest_streamorder.scheduling as s; "
            "s.parse_replay('v1.eager.s0.' + s.Schedule('eager', 0, ()).token.split('.')[-1]); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    # Every import, those under TYPE_CHECKING and inside functions included: nothing of
    # ours outside the package but errors.py, and no cycle inside it.
    graph: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / "scheduling").glob("*.py")):
        graph[path.stem] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name == "..errors":
                    continue  # the torch-free error classes, shared by the whole package
                assert not name.startswith(("..", "torch", "pytest_streamorder")), (path.name, name)
                if name.startswith(".") and path.stem != "__init__":
                    graph[path.stem].add(name.lstrip("."))
    assert graph["chooser"] == set() and graph["queues"] == set()

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,)))
                   for n in graph.get(start, ()))

    assert not [m for m in graph if reaches(m, m)]
