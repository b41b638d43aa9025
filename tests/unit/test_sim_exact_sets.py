"""Exact memory on the virtual device: no false alarm from imprecision.

Each program writes one buffer from two streams with no edge between them. Correct
twins touch disjoint elements (slots named by index tensors, even/odd slots, column
halves, rows of a pinned buffer) and must be silent under every scheduling policy; each
broken twin shares exactly one element and must be reported, under every policy, with
the same verdict: an indexed op's set is known only when it runs, but it is checked
against the clocks of its issue, so the schedule cannot change the answer.
"""

from __future__ import annotations

import pytest
import torch

import pytest_streamorder as so
from pytest_streamorder.errors import StreamRaceError
from pytest_streamorder.scheduling import POLICIES

I64 = torch.int64
SEEDS = range(3)


def run(program, policy: str, seed: int = 0, **kw):
    with so.virtual_device(seed=seed, policy=policy, raise_on_race=False) as vd:
        result = program(**kw)
    return vd, result


def every_schedule(program, **kw) -> list:
    """(policy, seed, races) of the program under every policy and a few seeds."""
    out = []
    for policy in POLICIES:
        for seed in SEEDS:
            vd, _ = run(program, policy, seed, **kw)
            out.append((policy, seed, vd.races))
    return out


# --- the programs ------------------------------------------------------------------------

def publish_slots(first=(1, 2), second=(5, 6)):
    """SGLang's fixed publish (after PR #30435): each of two forward streams index_put_s
    its requests' new sequence lengths into new_seq_lens_buf, each records its own event,
    the D2H stream waits on both and copies the whole buffer to pinned memory."""
    new_seq_lens_buf = torch.zeros(8, dtype=I64, device="cuda")
    pinned = torch.zeros(8, dtype=I64, pin_memory=True)
    torch.cuda.synchronize()
    fwd_a, fwd_b, d2h = torch.cuda.Stream(), torch.cuda.Stream(), torch.cuda.Stream()
    ready_a, ready_b = torch.cuda.Event(), torch.cuda.Event()
    with torch.cuda.stream(fwd_a):
        idx = torch.tensor(first, device="cuda")
        new_seq_lens_buf[idx] = torch.tensor([10, 11], device="cuda")
        ready_a.record()
    with torch.cuda.stream(fwd_b):
        idx = torch.tensor(second, device="cuda")
        new_seq_lens_buf.index_put_((idx,), torch.tensor([20, 21], device="cuda"))
        ready_b.record()
    d2h.wait_event(ready_a)
    d2h.wait_event(ready_b)
    with torch.cuda.stream(d2h):
        pinned.copy_(new_seq_lens_buf, non_blocking=True)
    d2h.synchronize()
    return pinned.tolist()


def even_odd(shared: bool = False):
    """Two streams write the even and the odd slots of one buffer through index tensors."""
    buf = torch.zeros(8, dtype=I64, device="cuda")
    torch.cuda.synchronize()
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    even = torch.arange(0, 8, 2, device="cuda")
    odd = torch.arange(1, 8, 2, device="cuda")
    if shared:
        odd = torch.tensor([1, 3, 4, 7], device="cuda")  # slot 4 is even
    torch.cuda.synchronize()
    with torch.cuda.stream(s1):
        buf.index_fill_(0, even, 1)
    with torch.cuda.stream(s2):
        buf.index_fill_(0, odd, 2)
    torch.cuda.synchronize()
    return buf.tolist()


def scalar_assignment(shared: bool = False):
    """`buf[idx] = 7` from two streams, each indexing with a tensor made on its stream:
    on CUDA the Python scalar is copied to the device (and the stream synced) inside
    index_put_, before its kernel; that sync must not order the other stream's write."""
    buf = torch.zeros(8, dtype=I64, device="cuda")
    torch.cuda.synchronize()
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    for stream, slots, value in ((s1, [0, 2, 4, 6], 1), (s2, [1, 3, 5, 6 if shared else 7], 2)):
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            buf[torch.tensor(slots, device="cuda")] = value
    torch.cuda.current_stream().wait_stream(s1)
    torch.cuda.current_stream().wait_stream(s2)
    return buf.tolist()


def column_halves(overlap: int = 0):
    """Two streams write x[:, :8] and x[:, 8 - overlap:] of a (4, 16) buffer."""
    x = torch.zeros(4, 16, device="cuda")
    torch.cuda.synchronize()
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    with torch.cuda.stream(s1):
        x[:, :8].fill_(1)
    with torch.cuda.stream(s2):
        x[:, 8 - overlap:].fill_(2)
    torch.cuda.synchronize()
    return x.sum().item()


def pinned_rows(read_row: int | None = None):
    """D2H copies of two device rows into rows 0 and 1 of a pinned buffer, the second
    issued while the first is in flight; then (broken) the host reads a row before the
    sync."""
    pinned = torch.zeros(2, 4, dtype=I64, pin_memory=True)
    a = torch.full((4,), 7, dtype=I64, device="cuda")
    b = torch.full((4,), 9, dtype=I64, device="cuda")
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    s1.wait_stream(torch.cuda.current_stream())
    s2.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s1):
        pinned[0].copy_(a, non_blocking=True)
    with torch.cuda.stream(s2):
        pinned[1].copy_(b, non_blocking=True)
    early = pinned[read_row].tolist() if read_row is not None else None
    torch.cuda.synchronize()
    return pinned.tolist(), early


def checked_before_it_runs(slot: int):
    """A pending index_put_ on s1 is issued first; s2 then writes `slot` with a plain
    (exact) write, checked before s1's op ran under the lazy policy."""
    buf = torch.zeros(8, dtype=I64, device="cuda")
    idx = torch.tensor([0, 1], device="cuda")
    torch.cuda.synchronize()
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    with torch.cuda.stream(s1):
        buf[idx] = torch.tensor([4, 5], device="cuda")
    with torch.cuda.stream(s2):
        buf[slot:slot + 1].fill_(9)
    torch.cuda.synchronize()
    return buf.tolist()


# --- the verdicts, under every schedule ----------------------------------------------------

CORRECT = [
    ("disjoint slots (SGLang's fixed publish)", publish_slots, {}),
    ("even and odd slots", even_odd, {}),
    ("column halves", column_halves, {}),
    ("pinned rows", pinned_rows, {}),
    ("buf[idx] = scalar from two streams, disjoint", scalar_assignment, {}),
    ("a later write to another slot, checked before the indexed op ran", checked_before_it_runs,
     {"slot": 3}),
]
BROKEN = [
    ("one shared slot", publish_slots, {"second": (2, 6)}),
    ("even and odd sharing one slot", even_odd, {"shared": True}),
    ("column halves overlapping by one column", column_halves, {"overlap": 1}),
    ("host reads a pinned row before the sync", pinned_rows, {"read_row": 0}),
    ("buf[idx] = scalar from two streams sharing a slot", scalar_assignment, {"shared": True}),
    ("a later write to a slot it writes, checked before it ran", checked_before_it_runs,
     {"slot": 1}),
]


@pytest.mark.parametrize("what, program, kw", CORRECT, ids=[c[0] for c in CORRECT])
def test_disjoint_elements_are_silent_on_every_schedule(what, program, kw):
    for policy, seed, races in every_schedule(program, **kw):
        assert races == [], f"{what}: false alarm under {policy}:{seed}\n{races[0]}"


@pytest.mark.parametrize("what, program, kw", BROKEN, ids=[c[0] for c in BROKEN])
def test_one_shared_element_is_a_race_on_every_schedule(what, program, kw):
    verdicts = set()
    for policy, seed, races in every_schedule(program, **kw):
        assert len(races) == 1, f"{what}: {len(races)} races under {policy}:{seed}"
        race = races[0]
        verdicts.add((race.earlier.op, race.earlier.kind, race.later.op, race.later.kind))
    assert len(verdicts) == 1, f"{what}: the verdict depends on the schedule: {verdicts}"


def test_values_of_the_correct_twins():
    vd, values = run(publish_slots, "random", 1)
    assert values == [0, 10, 11, 0, 0, 20, 21, 0]
    assert run(even_odd, "lazy")[1] == [1, 2] * 4
    assert run(column_halves, "delay")[1] == 4 * 8 * 1 + 4 * 8 * 2
    assert run(pinned_rows, "random", 2)[1][0] == [[7] * 4, [9] * 4]


def test_shared_slot_report_names_both_lines_and_where_it_was_found():
    with pytest.raises(StreamRaceError) as info:
        with so.virtual_device(seed=0, policy="lazy"):
            publish_slots(second=(2, 6))
    text = str(info.value)
    race = info.value.race
    assert race.earlier.op == "aten.index_put_" and race.later.op == "aten.index_put_"
    assert race.earlier.is_write and race.later.is_write
    lines = {race.earlier.site.location(), race.later.site.location()}
    assert any("new_seq_lens_buf[idx] = " in _source(loc) for loc in lines)
    assert any("index_put_((idx,)" in _source(loc) for loc in lines)
    # Only the shared slot (int64 slot 2: bytes [16, 24)) is in both sets.
    assert "only [8, 24)" in text or "bytes [8, 24)" in text
    assert "found: when the indexed op ran" in text
    assert race.found_at is not None and "d2h.synchronize()" in _source(race.found_at.location())


def test_a_pending_race_is_raised_at_the_next_launch():
    """Under eager, the indexed op runs at its launch: the race is raised by the host's
    next launch, at that line."""
    with pytest.raises(StreamRaceError) as info:
        with so.virtual_device(seed=0, policy="eager"):
            buf = torch.zeros(8, dtype=I64, device="cuda")
            idx = torch.tensor([2], device="cuda")
            torch.cuda.synchronize()
            s1 = torch.cuda.Stream()
            buf[2:4].fill_(1)  # default stream
            with torch.cuda.stream(s1):
                buf[idx] = torch.tensor([5], device="cuda")  # unordered with the fill
            after = torch.ones(1, device="cuda")  # noqa: F841  (the next launch)
    race = info.value.race
    assert race.later.op == "aten.index_put_"
    assert "after = torch.ones" in _source(race.found_at.location())


@pytest.mark.parametrize("op", ["index_copy_", "index_add_", "scatter_", "scatter_add_",
                                "scatter_reduce_", "masked_fill_", "masked_scatter_", "put_"])
@pytest.mark.parametrize("overlap", [False, True])
def test_indexed_writes_touch_only_their_elements(op, overlap):
    """Two streams each write half of a (4, 4) buffer through an indexed op; the broken
    twin's second op also touches one element of the first half."""
    def program():
        x = torch.zeros(4, 4, device="cuda")
        torch.cuda.synchronize()
        s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
        rows = [0, 1], [2, 3] if not overlap else [1, 3]
        for stream, r in zip((s1, s2), rows):
            with torch.cuda.stream(stream):
                _indexed_write(op, x, r)
        torch.cuda.synchronize()
        return x.tolist()

    for policy in ("lazy", "eager", "random"):
        vd, values = run(program, policy)
        assert len(vd.races) == int(overlap), f"{op} under {policy}"
        assert values == run(program, "eager")[1]


def _indexed_write(op: str, x, rows: list) -> None:
    idx = torch.tensor(rows, device="cuda")
    src = torch.ones(len(rows), 4, device="cuda")
    if op == "index_copy_":
        x.index_copy_(0, idx, src)
    elif op == "index_add_":
        x.index_add_(0, idx, src)
    elif op in ("scatter_", "scatter_add_", "scatter_reduce_"):
        index = idx.view(-1, 1).expand(len(rows), 4).contiguous()
        if op == "scatter_":
            x.scatter_(0, index, src)
        elif op == "scatter_add_":
            x.scatter_add_(0, index, src)
        else:
            x.scatter_reduce_(0, index, src, "amax")
    elif op in ("masked_fill_", "masked_scatter_"):
        mask = torch.zeros(4, 1, dtype=torch.bool, device="cuda")
        mask[idx] = True
        if op == "masked_fill_":
            x.masked_fill_(mask, 3.0)
        else:
            x.masked_scatter_(mask, src)
    else:
        flat = (idx.view(-1, 1) * 4 + torch.arange(4, device="cuda")).reshape(-1)
        x.put_(flat, src.reshape(-1))


def test_gather_reads_only_the_named_slots():
    """A schedule stream gathers slots forward does not write: no race; gathering the
    slot forward writes without waiting: a race naming the gather."""
    def program(slot):
        buf = torch.zeros(8, dtype=I64, device="cuda")
        torch.cuda.synchronize()
        forward, schedule = torch.cuda.Stream(), torch.cuda.Stream()
        with torch.cuda.stream(forward):
            buf[4:6].fill_(1)
        with torch.cuda.stream(schedule):
            seq_lens = buf[torch.tensor([0, slot], device="cuda")]
            picked = buf.index_select(0, torch.tensor([1], device="cuda"))
        torch.cuda.synchronize()
        return seq_lens.tolist() + picked.tolist()

    for policy in ("lazy", "eager", "random"):
        assert run(program, policy, slot=2)[0].races == []
        races = run(program, policy, slot=5)[0].races
        assert len(races) == 1 and races[0].later.op == "aten.index.Tensor"


def test_masked_index_put_syncs_and_is_exact():
    """buf[mask] = v syncs (its mask goes through nonzero); its set is the mask's."""
    def program(shared):
        buf = torch.zeros(8, device="cuda")
        torch.cuda.synchronize()
        s1 = torch.cuda.Stream()
        with torch.cuda.stream(s1):
            buf[0:2].fill_(1)
        mask = torch.zeros(8, dtype=torch.bool, device="cuda")
        mask[1 if shared else 6] = True
        buf[mask] = 5.0  # default stream, no wait on s1
        torch.cuda.synchronize()
        return buf.tolist()

    for policy in ("lazy", "random"):
        assert run(program, policy, shared=False)[0].races == []
        assert len(run(program, policy, shared=True)[0].races) == 1


def test_spans_mode_is_what_exact_sets_fix():
    """With exact sets switched off (ranges.set_exact, the benchmark's baseline) the
    correct twins are reported: these tests could fail."""
    from pytest_streamorder.ops import ranges

    previous = ranges.set_exact(False)
    try:
        assert run(column_halves, "lazy")[0].races
        assert run(even_odd, "lazy")[0].races
    finally:
        ranges.set_exact(previous)
    assert not run(column_halves, "lazy")[0].races


def _source(location: str) -> str:
    """The source line of a 'file:line in func' location."""
    import linecache

    path, rest = location.rsplit(":", 1)
    return linecache.getline(path, int(rest.split()[0]))


# --- host accesses to pinned memory: views, keys, columns -------------------------------------

def host_writes_while_row_copies(key):
    """Row 0 of a pinned buffer is the target of an unfinished D2H copy; the host then
    writes `pinned[key]`."""
    pinned = torch.zeros(4, 4, dtype=I64, pin_memory=True)
    src = torch.full((4,), 7, dtype=I64, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        pinned[0].copy_(src, non_blocking=True)
    pinned[key] = 5  # host write: a race only if it touches row 0
    torch.cuda.synchronize()
    return pinned.tolist()


@pytest.mark.parametrize("key, racy", [
    (1, False), (slice(2, 4), False), ((slice(1, None), 0), False),
    (torch.tensor([1, 3]), False), ((torch.tensor([2, 3]), torch.tensor([0, 3])), False),
    (torch.tensor([False, True, True, False]), False),
    (0, True), ((0, 3), True), ((slice(None), 0), True), (torch.tensor([3, 0]), True),
    (torch.tensor([True, False, False, False]), True),
])
def test_host_writes_to_pinned_are_exact(key, racy):
    for policy in ("lazy", "random"):
        vd, values = run(host_writes_while_row_copies, policy, key=key)
        assert len(vd.races) == int(racy), (key, policy)
        if not racy:
            assert values[0] == [7] * 4


def test_host_reads_of_pinned_are_exact():
    """A strided column and a gathered row, read while row 0's copy is in flight."""
    def program(read):
        pinned = torch.zeros(4, 4, dtype=I64, pin_memory=True)
        src = torch.full((4,), 7, dtype=I64, device="cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            pinned[0].copy_(src, non_blocking=True)
        got = read(pinned)
        torch.cuda.synchronize()
        return got

    silent = [lambda p: p[1:, 2].tolist(), lambda p: p[torch.tensor([2, 3])].sum().item(),
              lambda p: p[1].clone()]
    racy = [lambda p: p[:, 2].tolist(), lambda p: p[torch.tensor([0, 3])].sum().item(),
            lambda p: p[0].clone()]
    for read in silent:
        assert run(program, "lazy", read=read)[0].races == []
    for read in racy:
        assert len(run(program, "lazy", read=read)[0].races) == 1


def test_d2h_copies_into_pinned_columns_are_exact():
    """Two streams copy into columns 0 and 1 of one pinned buffer (strided, interleaved)."""
    def program(col):
        pinned = torch.zeros(4, 2, dtype=I64, pin_memory=True)
        a = torch.full((4,), 1, dtype=I64, device="cuda")
        b = torch.full((4,), 2, dtype=I64, device="cuda")
        s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
        s1.wait_stream(torch.cuda.current_stream())
        s2.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s1):
            pinned[:, 0].copy_(a, non_blocking=True)
        with torch.cuda.stream(s2):
            pinned[:, col].copy_(b, non_blocking=True)
        torch.cuda.synchronize()
        return pinned.tolist()

    vd, values = run(program, "random", col=1)
    assert vd.races == [] and values == [[1, 2]] * 4
    assert len(run(program, "random", col=0)[0].races) == 1
