"""Replay exactness on the virtual device: run -> written form -> parse -> replay gives
the identical choices and identical results, for every policy, for random programs and
for chains of the bug-class programs, including long schedules that go through '@file';
and a replay that cannot fit the program says where it diverged."""

from __future__ import annotations

import inspect
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import pytest_streamorder as so
from pytest_streamorder.scheduling import MAX_INLINE, Schedule, ScheduleDiverged, parse_replay
from tests import cuda_programs as programs

PROGRAMS = [f for name, f in vars(programs).items()
            if inspect.isfunction(f) and f.__module__ == programs.__name__
            and not name.startswith("_") and not inspect.signature(f).parameters]

# --- random multi-stream programs ----------------------------------------------------------

STREAMS, EVENTS = 3, 2
op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, STREAMS), st.integers(1, 9)),  # stream STREAMS: default
    st.tuples(st.just("record"), st.integers(0, STREAMS), st.integers(0, EVENTS - 1)),
    st.tuples(st.just("wait"), st.integers(0, STREAMS), st.integers(0, EVENTS - 1)),
    st.tuples(st.just("d2h"), st.integers(0, STREAMS)),
    st.tuples(st.just("read"), st.integers(0, STREAMS)),
    st.tuples(st.just("sync"), st.integers(0, STREAMS)),
    st.tuples(st.just("query"), st.integers(0, EVENTS - 1)),
    st.tuples(st.just("event_sync"), st.integers(0, EVENTS - 1)),
)
random_programs = st.lists(op, min_size=1, max_size=40)


def run_random(ops) -> list:
    """Run `ops` on the active device; return every value the host saw."""
    streams = [torch.cuda.Stream() for _ in range(STREAMS)] + [torch.cuda.current_stream()]
    events = [torch.cuda.Event() for _ in range(EVENTS)]
    buf = torch.zeros(4, dtype=torch.int64, device="cuda")
    pinned = torch.zeros(4, dtype=torch.int64, pin_memory=True)
    seen: list = []
    for kind, *args in ops:
        if kind == "add":
            with torch.cuda.stream(streams[args[0]]):
                buf.add_(args[1])
        elif kind == "record":
            events[args[1]].record(streams[args[0]])
        elif kind == "wait":
            streams[args[0]].wait_event(events[args[1]])
        elif kind == "d2h":
            with torch.cuda.stream(streams[args[0]]):
                pinned.copy_(buf, non_blocking=True)
        elif kind == "read":
            with torch.cuda.stream(streams[args[0]]):
                seen.append(buf.tolist())
        elif kind == "sync":
            streams[args[0]].synchronize()
        elif kind == "query":
            seen.append(events[args[0]].query())
        else:
            events[args[0]].synchronize()
    torch.cuda.synchronize()
    seen.append(pinned.tolist())
    seen.append(buf.tolist())
    return seen


def run(body, **device_kwargs):
    with so.virtual_device(raise_on_race=False, **device_kwargs) as vd:
        result = body()
    return vd, result, [(r.key(), r.explain()) for r in vd.races]


def round_trip(schedule: Schedule, directory) -> tuple[str, Schedule]:
    arg = schedule.replay_argument(directory, stem="t.py::t")
    return arg, parse_replay(arg)


def assert_replays_exactly(body, policy: str, seed: int, directory) -> str:
    vd, result, races = run(body, seed=seed, policy=policy)
    arg, parsed = round_trip(vd.schedule, directory)
    assert parsed == vd.schedule and parsed.options == vd.schedule.options
    vd2, result2, races2 = run(body, replay=parsed)
    assert vd2.chooser.choices == vd.chooser.choices
    assert vd2.chooser.options == vd.chooser.options
    assert vd2.schedule == vd.schedule and (vd2.policy, vd2.seed) == (policy, seed)
    assert result2 == result
    assert races2 == races
    assert vd2.ops_issued == vd.ops_issued and vd2.scheduler.steps == vd.scheduler.steps
    return arg


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(random_programs, st.sampled_from(so.POLICIES), st.integers(0, 2**32))
def test_random_programs_replay_exactly(ops, policy, seed):
    with tempfile.TemporaryDirectory() as directory:
        assert_replays_exactly(lambda: run_random(ops), policy, seed, directory)


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PROGRAMS), min_size=1, max_size=30),
       st.sampled_from(so.POLICIES), st.integers(0, 2**32))
def test_chains_of_bug_class_programs_replay_exactly(chain, policy, seed):
    def body():
        return [fn() for fn in chain]

    with tempfile.TemporaryDirectory() as directory:
        assert_replays_exactly(body, policy, seed, directory)


@pytest.mark.parametrize("policy", so.POLICIES)
def test_long_schedules_replay_through_a_file(policy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def body():
        return [fn() for fn in PROGRAMS * 3]

    arg = assert_replays_exactly(body, policy, 11, tmp_path / "cache")
    token = parse_replay(arg).token
    if len(token) > MAX_INLINE:
        assert arg.startswith("@cache") and len(arg) <= MAX_INLINE
        assert (tmp_path / arg[1:]).read_text().splitlines()[-1] == token
    else:
        assert arg == token
    # random makes a decision per scheduling point (hundreds here); pct one per stream
    # and per change point; delay one; eager and lazy none.
    assert arg.startswith("@") == (policy in ("random", "pct"))


def test_pct_learns_the_run_length_on_the_device():
    def body():
        return [fn() for fn in PROGRAMS * 2]

    vd, _, _ = run(body, seed=3, policy="pct")
    steps = vd.scheduler.steps
    assert steps > 128
    assert vd.scheduler.rule.horizon >= steps > vd.scheduler.rule.horizon // 2
    assert 128 in vd.chooser.options  # change points drawn in [128, 256)


def test_an_old_seed_only_token_reruns_from_the_seed():
    vd, result, _ = run(programs.missing_war_barrier, seed=4, policy="random")
    vd2, result2, _ = run(programs.missing_war_barrier, replay=parse_replay("random:4"))
    assert vd2.schedule == vd.schedule and result2 == result


# --- divergence ---------------------------------------------------------------------------

def test_replaying_on_another_program_says_where_it_diverged():
    vd, _, _ = run(programs.missing_war_barrier, seed=2, policy="random")
    with pytest.raises(ScheduleDiverged) as info:
        run(programs.d2h_not_gated, replay=vd.schedule)
    exc = info.value
    assert str(exc).startswith(f"replayed schedule diverged at choice #{exc.step} (random: ")
    assert "the recorded run" in str(exc) and "this run" in str(exc)
    assert "ready streams now:" in str(exc) or "end of the run" in str(exc)


def test_a_replay_that_ends_early_raises_at_exit():
    def longer():
        return programs.missing_war_barrier(), programs.d2h_gated()

    vd, _, _ = run(longer, seed=0, policy="random")
    recorded = vd.schedule
    with pytest.raises(ScheduleDiverged) as info:
        # The first program alone asks for a prefix of the recorded choices, then stops.
        run(programs.missing_war_barrier, replay=recorded)
    msg = str(info.value)
    assert "(end of the run): the run ended after" in msg
    assert f"of the {len(recorded.choices)} recorded choices" in msg


def test_a_failing_replay_that_ends_early_keeps_its_error_and_says_so():
    vd, _, _ = run(lambda: [programs.d2h_gated(), programs.d2h_gated()], seed=1, policy="random")
    with pytest.raises(ZeroDivisionError) as info:
        with so.virtual_device(replay=vd.schedule):
            programs.d2h_gated()
            1 / 0
    notes = getattr(info.value, "__notes__", [])
    assert any("the run ended after" in n for n in notes)


def test_a_cuda_schedule_does_not_replay_on_the_virtual_device():
    with pytest.raises(ValueError, match="'cuda' schedule replays on the real-GPU backend"):
        so.virtual_device(replay=parse_replay("cuda:3"))


def test_the_package_exports():
    assert so.Schedule is Schedule and so.parse_replay is parse_replay
    assert so.ScheduleDiverged is ScheduleDiverged
