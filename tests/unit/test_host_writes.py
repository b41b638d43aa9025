"""Host accesses no interception sees (C code, here ctypes): a write to the source of a
pending H2D copy is found by comparing its bytes with a snapshot taken at issue (when the
copy runs on the virtual device; at the covering host sync on a GPU, UploadWatches,
tested here on the CPU with the model alone), and an early read of a pending D2H target
shows poison. No NumPy needed."""

from __future__ import annotations

import ctypes
import inspect

import pytest
import torch

import pytest_streamorder as so
from pytest_streamorder.gpu.pinned import UploadWatches
from pytest_streamorder.model import HappensBefore, Site
from pytest_streamorder.model.regions import strided
from pytest_streamorder.ops.host_writes import SourceSnapshot, UnseenHostWrite

pytest_plugins = ["pytester"]
I32 = torch.int32


def _line(marker: str) -> int:
    lines = inspect.getsource(inspect.getmodule(_line)).splitlines()
    return next(i for i, text in enumerate(lines, 1) if marker in text and "_line(" not in text)


def _c_write(t: torch.Tensor, index: int, value: int) -> None:
    """Write one int32 element the way C code would: through its address."""
    ctypes.c_int32.from_address(t.data_ptr() + 4 * index).value = value


def _staging_program(sync_first: bool, value: int = 7):
    cpu = torch.ones(8, dtype=I32, pin_memory=True)
    gpu = torch.zeros(8, dtype=I32, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(1_000_000)
        gpu.copy_(cpu, non_blocking=True)  # ISSUE
    if sync_first:
        side.synchronize()
    _c_write(cpu, 2, value)  # C-WRITE
    torch.cuda.synchronize()  # RUNS
    return gpu.tolist()


def test_a_c_write_before_the_copy_ran_is_a_race_naming_the_copy_and_the_window():
    with so.virtual_device(seed=0, policy="lazy", raise_on_race=False) as vd:
        values = _staging_program(sync_first=False)
    assert values[2] == 7  # the copy ran after the write: stale
    assert len(vd.races) == 1
    race = vd.races[0]
    assert isinstance(race, UnseenHostWrite)
    assert race.earlier.op == "H2D copy_" and race.earlier.agent.name == "side"
    assert race.later.agent.is_host and race.later.is_write
    assert (race.later.start, race.later.stop, race.later.region) == (8, 12, None)  # element 2
    text = str(race)
    issue, runs = _line("# ISSUE"), _line("# RUNS")
    assert f"earlier: read by stream 'side' in H2D copy_, bytes [0, 32)" in text
    assert f"test_host_writes.py:{issue}" in text
    assert (f"found: when the copy ran (at tests/unit/test_host_writes.py:{runs} in "
            f"_staging_program), its source no longer held the bytes it had at issue (at "
            f"tests/unit/test_host_writes.py:{issue} in _staging_program)") in text
    assert "a write of the same value is not seen" in text
    assert f"reported at tests/unit/test_host_writes.py:{runs}" in text
    assert "Synchronize 'side'" in race.explain()


@pytest.mark.parametrize("policy", ["random", "delay", "pct"])
def test_reported_exactly_on_the_schedules_where_the_copy_ran_after_the_write(policy):
    """Found by its effect: on a schedule that ran the copy before the write nothing
    changed (and the value is right); on every other one the race is reported."""
    outcomes = set()
    for seed in range(12):
        with so.virtual_device(seed=seed, policy=policy, raise_on_race=False) as vd:
            values = _staging_program(sync_first=False)
        stale = values[2] == 7
        assert len(vd.races) == (1 if stale else 0), (seed, values)
        outcomes.add(stale)
    if policy == "random":
        assert outcomes == {True, False}  # both kinds of schedule were seen


def test_a_c_write_after_the_sync_is_silent():
    for policy in ("lazy", "delay", "random", "eager"):
        with so.virtual_device(seed=0, policy=policy, raise_on_race=False) as vd:
            values = _staging_program(sync_first=True)
        assert values == [1] * 8 and not vd.races


def test_a_write_of_the_same_value_is_not_seen():
    with so.virtual_device(seed=0, policy="lazy", raise_on_race=False) as vd:
        values = _staging_program(sync_first=False, value=1)
    assert values == [1] * 8 and not vd.races  # documented: only changed bytes show


def test_raised_at_the_host_call_during_which_the_copy_ran():
    with so.virtual_device(seed=0, policy="lazy"):
        with pytest.raises(so.StreamRaceError) as info:
            _staging_program(sync_first=False)
    assert "code the plugin does not see" in str(info.value)


def test_a_device_write_to_the_source_is_not_taken_for_the_hosts():
    """D2H into the staging then H2D from it, one stream (a correct round trip): the
    source changes between the H2D's issue and its run, by the device: silent."""
    for policy in ("lazy", "delay", "random", "pct"):
        with so.virtual_device(seed=0, policy=policy, raise_on_race=False) as vd:
            stage = torch.zeros(4, dtype=I32, pin_memory=True)
            a = torch.arange(4, dtype=I32, device="cuda")
            b = torch.zeros(4, dtype=I32, device="cuda")
            stage.copy_(a, non_blocking=True)
            b.copy_(stage, non_blocking=True)
            stage.copy_(a * 2, non_blocking=True)
            torch.cuda.synchronize()
            assert b.tolist() == [0, 1, 2, 3]
        assert not vd.races, [str(r) for r in vd.races]


def test_a_pending_d2h_target_holds_poison_until_the_copy_runs():
    with so.virtual_device(seed=0, policy="lazy", raise_on_race=False) as vd:
        gpu = torch.arange(6, dtype=I32, device="cuda")
        cpu = torch.zeros(6, dtype=I32, pin_memory=True)
        torch.cuda.synchronize()
        cpu[1:5].copy_(gpu[1:5], non_blocking=True)
        raw = (ctypes.c_int32 * 6).from_address(cpu.data_ptr())
        early = list(raw)  # C code reading before the sync
        torch.cuda.synchronize()
        late = list(raw)
    assert early == [0, -1, -1, -1, -1, 0]  # poison on exactly the copy's elements
    assert late == [0, 1, 2, 3, 4, 0]
    assert not vd.races  # ctypes reads are not seen: the poison is what shows them


def test_no_poison_while_an_earlier_copy_still_reads_the_buffer():
    """An H2D from the buffer is queued before the D2H into it (same stream, FIFO): the
    H2D must read the old bytes, so the buffer is not poisoned."""
    with so.virtual_device(seed=0, policy="lazy", raise_on_race=False) as vd:
        stage = torch.full((4,), 5, dtype=I32, pin_memory=True)
        out = torch.zeros(4, dtype=I32, device="cuda")
        src = torch.arange(4, dtype=I32, device="cuda")
        torch.cuda.synchronize()
        out.copy_(stage, non_blocking=True)
        stage.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        assert out.tolist() == [5] * 4 and stage.tolist() == [0, 1, 2, 3]
    assert not vd.races


def test_snapshot_names_exactly_the_changed_elements_of_a_strided_source():
    t = torch.zeros(4, 4, dtype=I32)
    col = t[:, 1]  # bytes 4, 20, 36, 52
    start, stop, region = strided(tuple(col.shape), col.stride(), col.storage_offset(), 4)
    snap = SourceSnapshot(t.untyped_storage().data_ptr(), start, stop, region, 4)
    assert snap.changed() is None
    t[0, 0] = 9  # not an element of the column
    assert snap.changed() is None
    t[2, 1] = 9
    t[3, 1] = 9
    changed = snap.changed()  # elements (2, 1) and (3, 1)
    assert changed[:2] == (36, 56) and changed[2].runs() == [(36, 40), (52, 56)]
    t[0, 1] = 9
    changed = snap.changed()
    assert changed[2].runs() == [(4, 8), (36, 40), (52, 56)]


def test_gpu_upload_watches_compare_at_the_covering_sync():
    """UploadWatches (the GPU backend's) with the model alone and host memory: a change
    before the sync covering the copy is a race, deferred to the next flush; a change
    after it, or to a source a device write may change, is not."""
    hb = HappensBefore()
    hb.flush_on_sync = False  # as on the GPU backend
    watches = UploadWatches()
    hb.on_host_sync = lambda: watches.host_synced(hb)
    side = hb.new_stream("side")
    src = torch.ones(8, dtype=I32)
    alloc = hb.allocate(32, "'src' (int32[8])", space="host")
    site = Site.here()
    hb.launch(side, "aten.copy_", [(alloc, 0, 32, False)], site)
    watches.launched(hb, side, [(src, alloc, (0, 32, None), False)], "aten.copy_", site, queued=True)
    assert len(watches) == 1
    _c_write(src, 5, 3)
    hb.sync_stream(side)  # covers the copy: compared now, reported at the next flush
    assert len(watches) == 0 and not hb.races
    hb.flush()
    assert len(hb.races) == 1
    race = hb.races[0]
    assert (race.later.start, race.later.stop) == (20, 24)
    assert "at the host sync that covered the copy" in str(race)

    # after the covering sync: a legitimate refill, not compared
    hb.launch(side, "aten.copy_", [(alloc, 0, 32, False)], site)
    watches.launched(hb, side, [(src, alloc, (0, 32, None), False)], "aten.copy_", site, queued=True)
    hb.sync_stream(side)
    _c_write(src, 5, 4)
    hb.sync_stream(side)
    hb.flush()
    assert len(hb.races) == 1

    # a D2H into the buffer still in flight: the H2D source is not watched
    hb.launch(side, "aten.copy_", [(alloc, 0, 32, True)], site)
    watches.launched(hb, side, [(src, alloc, (0, 32, None), True)], "aten.copy_", site, queued=True)
    hb.launch(side, "aten.copy_", [(alloc, 0, 32, False)], site)
    watches.launched(hb, side, [(src, alloc, (0, 32, None), False)], "aten.copy_", site, queued=True)
    assert len(watches) == 0
    watches.clear()


STAGING_TESTS = """
import ctypes
import torch

def _fill(cpu, value):  # C code filling the staging buffer
    ctypes.memset(cpu.data_ptr(), value, cpu.numel() * cpu.element_size())

def _step(cpu, gpu, value, done):
    _fill(cpu, value)
    gpu.copy_(cpu, non_blocking=True)
    total = gpu.sum()
    done.record()
    return total

def test_refill_waits():
    cpu = torch.zeros(8, dtype=torch.uint8, pin_memory=True)
    gpu = torch.zeros(8, dtype=torch.uint8, device="cuda")
    done = torch.cuda.Event()
    totals = []
    for step in range(3):
        done.synchronize()
        totals.append(_step(cpu, gpu, step + 1, done))
    torch.cuda.synchronize()
    assert [t.item() for t in totals] == [8, 16, 24]

def test_refill_before_copy_ran():
    cpu = torch.zeros(8, dtype=torch.uint8, pin_memory=True)
    gpu = torch.zeros(8, dtype=torch.uint8, device="cuda")
    done = torch.cuda.Event()
    torch.cuda._sleep(1_000_000)
    totals = [_step(cpu, gpu, step + 1, done) for step in range(3)]
    torch.cuda.synchronize()
    assert len(totals) == 3
"""


def test_plugin_reports_a_c_refill_of_the_staging_before_its_copy_ran(pytester):
    pytester.makepyfile(test_staging=STAGING_TESTS)
    result = pytester.runpytest("--streamorder", "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "test_refill_before_copy_ran" in out and "StreamRaceError" in out
    result.stdout.fnmatch_lines([
        "*earlier: read by stream 'default' in H2D copy_, bytes [[]0, 8)*",
        "*at test_staging.py:9 in _step*",
        "*later: write by the host in code the plugin does not see*",
        "*found: when the copy ran (at test_staging.py:*), its source no longer held the "
        "bytes it had at issue (at test_staging.py:9 in _step)*",
    ])


def test_gpu_upload_watches_forget_completed_device_writes():
    """Many pinned D2H targets in one run: completed writes do not pile up."""
    hb = HappensBefore()
    watches = UploadWatches()
    side = hb.new_stream("side")
    t = torch.zeros(4, dtype=I32)
    for i in range(2000):
        alloc = hb.allocate(16, f"'out{i}'", space="host")
        hb.launch(side, "aten.copy_", [(alloc, 0, 16, True)])
        watches.launched(hb, side, [(t, alloc, (0, 16, None), True)], "aten.copy_", None,
                         queued=False)
        hb.sync_stream(side)
    assert len(watches._writes) <= 512
