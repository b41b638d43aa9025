"""Every bug class of DESIGN.md, written as a plain torch.cuda program
(tests/cuda_programs.py), is caught on the virtual device under every policy and seed,
and its missing edge really makes values stale under some adversarial schedule; every
correct twin stays silent and correct under every policy, for many seeds.

Seeds for the twins: 200 in the `ci` Hypothesis profile (CI=true), 20 otherwise.
"""

from __future__ import annotations

import os

import pytest

import pytest_streamorder as so
from tests import cuda_programs as programs

CI = os.environ.get("CI", "").lower() == "true" or os.environ.get("HYPOTHESIS_PROFILE") == "ci"
BUG_SEEDS = range(10)
TWIN_SEEDS = range(200 if CI else 20)
STALE_POLICIES = ("lazy", "delay")


def run(fn, seed: int, policy: str):
    with so.virtual_device(seed=seed, policy=policy, raise_on_race=False) as vd:
        observed, expected = fn()
    return vd, observed, expected


# What each bug's report must say: (earlier agent, earlier kind, earlier op substring,
# later agent, later kind, later op substring, phrase of the missing edge).
REPORTS = {
    "d2h_not_gated": ("forward", "write", "index_put_", "d2h", "read", "D2H copy_",
                      "before waiting for any event recorded on 'forward'"),
    "host_reads_pinned_before_sync": ("d2h", "write", "D2H copy_", "host", "read", "tolist",
                                      "before synchronizing with 'd2h'"),
    "gather_without_publish_wait": ("forward", "write", "index_put_", "schedule", "read",
                                    "aten.index", "recorded on 'forward'"),
    "event_recorded_before_write": ("forward", "write", "index_put_", "d2h", "read", "D2H copy_",
                                    "record the event after the access it must fence"),
    "event_rerecorded_other_stream": ("forward", "write", "index_put_", "d2h", "read", "D2H copy_",
                                      "re-recorded on 'draft'"),
    "wait_before_record": ("forward", "write", "index_put_", "d2h", "read", "D2H copy_",
                           "before the event was ever recorded"),
    "missing_war_barrier": ("forward", "read", "aten.mul", "schedule", "write", "aten.copy_",
                            "wrote this before waiting for any event recorded on 'forward'"),
    "freed_without_record_stream": ("side", "read", "aten.add", "default", "write", "fill_",
                                    "record_stream"),
    "pinned_staging_overwritten": ("h2d", "read", "H2D copy_", "host", "write", "copy_",
                                   "Synchronize 'h2d'"),
    "stale_event_spec_off": ("forward", "write", "index_put_", "d2h", "read", "D2H copy_",
                             "recorded on 'forward' at op #1, before the write"),
    "default_stream_init_raced": ("default", "write", "torch.full", "side", "write", "add_",
                                  "recorded on 'default'"),
    "offset_view_writes": ("first", "write", "fill_", "second", "write", "fill_",
                           "recorded on 'first'"),
    "worker_output_read_unsynced": ("stream", "write", "aten.add", "default", "read",
                                    "D2H copy", "recorded on 'stream'"),
}


def test_every_bug_has_an_expected_report():
    assert set(REPORTS) == set(programs.BUGS)
    assert len(programs.BUGS) == 13


def _agent(acc) -> str:
    return "host" if acc.agent.is_host else acc.agent.name


@pytest.mark.parametrize("policy", so.POLICIES)
@pytest.mark.parametrize("name", list(programs.BUGS))
def test_bug_is_caught(name, policy):
    fn = programs.BUGS[name]
    e_agent, e_kind, e_op, l_agent, l_kind, l_op, phrase = REPORTS[name]
    keys = set()
    for seed in BUG_SEEDS:
        vd, observed, expected = run(fn, seed, policy)
        assert vd.races, f"{name}: no race reported under {policy}, seed {seed}"
        assert len(vd.races) == 1, f"{name} {policy}/{seed}: {[str(r) for r in vd.races]}"
        race = vd.races[0]
        where = f"{name} {policy}/{seed}:\n{race}"
        assert (_agent(race.earlier), race.earlier.kind) == (e_agent, e_kind), where
        assert (_agent(race.later), race.later.kind) == (l_agent, l_kind), where
        assert e_op in race.earlier.op and l_op in race.later.op, where
        assert phrase in race.explain(), where
        text = str(race)
        assert "cuda_programs.py" in text and f"in {fn.__name__}" in text, where
        keys.add(race.key())
    assert len(keys) == 1, f"{name}: the report differs between schedules: {keys}"


def test_offset_view_race_reports_the_byte_ranges():
    vd, _, _ = run(programs.offset_view_writes, 0, "eager")
    race = vd.races[0]
    assert (race.earlier.start, race.earlier.stop) == (16, 48)  # buf[2:6] of int64
    assert (race.later.start, race.later.stop) == (32, 64)  # buf[4:8]


def test_freed_without_record_stream_names_both_tensors():
    vd, _, _ = run(programs.freed_without_record_stream, 0, "lazy")
    text = str(vd.races[0])
    assert "'scratch'" in text and "reused block of: 'tmp'" in text
    assert "tensor.record_stream(<'side' stream>)" in vd.races[0].explain()


@pytest.mark.parametrize("name", list(programs.BUGS))
def test_bug_makes_values_stale(name):
    """Some lazy/delay schedule lets the late stream run late, and the program's own
    values are wrong; eager (ops run at launch) shows the values of program order."""
    fn = programs.BUGS[name]
    stale = []
    for policy in STALE_POLICIES:
        for seed in BUG_SEEDS:
            _, observed, expected = run(fn, seed, policy)
            if observed != expected:
                stale.append((policy, seed))
    assert stale, f"{name}: never stale under {STALE_POLICIES} for seeds {list(BUG_SEEDS)}"
    _, observed, expected = run(fn, 0, "eager")
    assert observed == expected


@pytest.mark.parametrize("name", list(programs.BUGS))
def test_bug_is_stale_under_lazy(name):
    """lazy runs nothing until the host waits: the late stream is always late."""
    _, observed, expected = run(programs.BUGS[name], 0, "lazy")
    assert observed != expected


@pytest.mark.parametrize("policy", so.POLICIES)
@pytest.mark.parametrize("name", list(programs.TWINS))
def test_twin_is_silent(name, policy):
    fn = programs.TWINS[name]
    for seed in TWIN_SEEDS:
        vd, observed, expected = run(fn, seed, policy)
        assert not vd.races, f"{name} {policy}/{seed}: false alarm:\n{vd.races[0]}"
        assert observed == expected, f"{name} {policy}/{seed}"


def test_twins_cover_design_md():
    wanted = {"same_stream_fifo", "wait_chain_three_streams", "event_synchronize",
              "query_polling", "record_stream", "war_barrier_read_done",
              "dp_idle_empty_batches", "wait_stream", "blocking_cpu_item"}
    assert wanted <= set(programs.TWINS)


def test_twins_with_injected_sleeps_stay_silent():
    """torch.cuda._sleep at every delay site changes nothing for correct code."""
    programs.set_delay(1_000_000)
    try:
        for name, fn in programs.TWINS.items():
            for policy in so.POLICIES:
                vd, observed, expected = run(fn, 1, policy)
                assert not vd.races and observed == expected, (name, policy)
    finally:
        programs.set_delay(0)


def test_bugs_with_injected_sleeps_are_still_caught():
    programs.set_delay(1_000_000)
    try:
        for name, fn in programs.BUGS.items():
            vd, observed, expected = run(fn, 0, "lazy")
            assert len(vd.races) == 1 and observed != expected, name
    finally:
        programs.set_delay(0)


@pytest.mark.parametrize("name", list(programs.BUGS))
def test_bug_raises_by_default(name):
    with pytest.raises(so.StreamRaceError) as info:
        with so.virtual_device(seed=0, policy="random"):
            programs.BUGS[name]()
    assert isinstance(info.value, AssertionError)
    assert "stream-order race" in str(info.value)
