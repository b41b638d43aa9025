"""One hand-written trace per CUDA ordering rule of DESIGN.md ("CUDA ordering rules").

Each test drives `HappensBefore` the way the virtual device or the GPU tracer would (in
host program order) and asserts which accesses raced, not just whether something did:
the ops, the agents, the byte ranges, and the words of the explanation where they carry
the diagnosis.
"""

from __future__ import annotations

import pytest

from pytest_streamorder.model import READ, WRITE, HappensBefore


@pytest.fixture
def hb():
    return HappensBefore()


def pairs(hb):
    """(earlier op, earlier agent, later op, later agent) of every race found, in order."""
    return [(r.earlier.op, r.earlier.agent.name, r.later.op, r.later.agent.name) for r in hb.races]


# --- a stream runs its work in FIFO order; different streams are unordered --------------


def test_same_stream_fifo_is_silent(hb):
    s = hb.new_stream("s")
    buf = hb.allocate(64, "buf")
    hb.launch(s, "fill_", [(buf, 0, 64, WRITE)])
    hb.launch(s, "add_", [(buf, 0, 64, READ), (buf, 0, 64, WRITE)])
    hb.launch(s, "sum", [(buf, 0, 64, READ)])
    hb.launch(s, "zero_", [(buf, 0, 64, WRITE)])
    assert hb.races == []
    assert hb.accesses == 5


@pytest.mark.parametrize(
    "first, second",
    [(WRITE, READ), (READ, WRITE), (WRITE, WRITE)],
    ids=["write-read", "read-write", "write-write"],
)
def test_two_streams_are_unordered(hb, first, second):
    a, b = hb.new_stream("a"), hb.new_stream("b")
    buf = hb.allocate(64, "buf")
    hb.launch(a, "op_a", [(buf, 0, 64, first)])
    races = hb.launch(b, "op_b", [(buf, 16, 32, second)])
    assert races == hb.races
    assert pairs(hb) == [("op_a", "a", "op_b", "b")]
    race = hb.races[0]
    assert (race.earlier.is_write, race.later.is_write) == (first, second)
    assert (race.earlier.start, race.earlier.stop) == (0, 64)
    assert (race.later.start, race.later.stop) == (16, 32)
    assert race.alloc is buf
    assert "before waiting for any event recorded on 'a'" in race.explain()
    text = str(race)
    assert text.startswith("stream-order race on buf:")
    assert "stream 'b'" in text and "stream 'a'" in text


def test_race_is_reported_once_per_later_access_and_returned(hb):
    a, b = hb.new_stream("a"), hb.new_stream("b")
    x, y = hb.allocate(8, "x"), hb.allocate(8, "y")
    hb.launch(a, "w1", [(x, 0, 8, WRITE)])
    hb.launch(a, "w2", [(x, 0, 4, WRITE), (y, 0, 8, WRITE)])
    found = hb.launch(b, "r", [(x, 0, 8, READ), (y, 0, 8, READ)])
    # One race per conflicting access of `r` (the first unordered conflict found).
    assert [(r.later.alloc.label, r.earlier.op) for r in found] == [("x", "w1"), ("y", "w2")]
    assert found == hb.races


# --- a launch carries the host's knowledge ------------------------------------------------


def test_host_write_of_pinned_then_h2d_launch_is_silent(hb):
    h2d = hb.new_stream("h2d")
    pinned = hb.allocate(32, "staging", space="host")
    dev = hb.allocate(32, "input_ids")
    hb.host_access("fill staging", [(pinned, 0, 32, WRITE)])
    hb.launch(h2d, "copy_ H2D", [(pinned, 0, 32, READ), (dev, 0, 32, WRITE)])
    assert hb.races == []


def test_launch_then_host_write_races(hb):
    h2d = hb.new_stream("h2d")
    pinned = hb.allocate(32, "staging", space="host")
    dev = hb.allocate(32, "input_ids")
    hb.launch(h2d, "copy_ H2D", [(pinned, 0, 32, READ), (dev, 0, 32, WRITE)])
    hb.host_access("refill staging", [(pinned, 0, 32, WRITE)])
    assert pairs(hb) == [("copy_ H2D", "h2d", "refill staging", "host")]
    assert hb.races[0].later.agent is hb.host
    assert "the host overwrote memory" in hb.races[0].explain()


def test_launch_carries_device_work_the_host_synced_on(hb):
    a, b = hb.new_stream("a"), hb.new_stream("b")
    buf = hb.allocate(16, "buf")
    hb.launch(a, "produce", [(buf, 0, 16, WRITE)])
    hb.sync_stream(a)
    hb.launch(b, "consume", [(buf, 0, 16, READ)])  # ordered through the host
    assert hb.races == []


def test_launch_does_not_carry_device_work_the_host_did_not_sync_on(hb):
    a, b = hb.new_stream("a"), hb.new_stream("b")
    buf = hb.allocate(16, "buf")
    hb.launch(a, "produce", [(buf, 0, 16, WRITE)])
    hb.launch(b, "consume", [(buf, 0, 16, READ)])  # launched after, but not ordered
    assert pairs(hb) == [("produce", "a", "consume", "b")]


# --- event.record captures the stream's position at call time ------------------------------


def test_record_captures_position_at_call_time(hb):
    fwd, d2h = hb.new_stream("forward"), hb.new_stream("d2h")
    before = hb.allocate(8, "before")
    after = hb.allocate(8, "after")
    ev = hb.new_event("ready")
    hb.launch(fwd, "write_before", [(before, 0, 8, WRITE)])
    hb.record(ev, fwd)
    hb.launch(fwd, "write_after", [(after, 0, 8, WRITE)])  # op #2, not covered
    hb.wait(d2h, ev)
    hb.launch(d2h, "read_before", [(before, 0, 8, READ)])
    assert hb.races == []
    hb.launch(d2h, "read_after", [(after, 0, 8, READ)])
    assert pairs(hb) == [("write_after", "forward", "read_after", "d2h")]
    race = hb.races[0]
    assert race.earlier.count == 2
    assert "recorded on 'forward' at op #1, before the write" in race.explain()


def test_re_record_on_same_stream_moves_the_capture_forward(hb):
    fwd, d2h = hb.new_stream("forward"), hb.new_stream("d2h")
    buf = hb.allocate(16, "buf")
    ev = hb.new_event("ready")
    hb.launch(fwd, "w0", [(buf, 0, 8, WRITE)])
    hb.record(ev, fwd)
    hb.launch(fwd, "w1", [(buf, 8, 16, WRITE)])
    hb.record(ev, fwd)  # re-record: the waiter now waits on the new position
    hb.wait(d2h, ev)
    hb.launch(d2h, "read", [(buf, 0, 16, READ)])
    assert hb.races == []


def test_re_record_on_another_stream_drops_the_first_fence(hb):
    fwd, sched, d2h = hb.new_stream("forward"), hb.new_stream("schedule"), hb.new_stream("d2h")
    buf = hb.allocate(16, "buf")
    ev = hb.new_event("publish_ready")
    hb.launch(fwd, "index_put_", [(buf, 0, 16, WRITE)])
    hb.record(ev, fwd)
    hb.record(ev, sched)  # replaces the capture: the fence on forward is gone
    hb.wait(d2h, ev)
    hb.launch(d2h, "copy_", [(buf, 0, 16, READ)])
    assert pairs(hb) == [("index_put_", "forward", "copy_", "d2h")]
    text = hb.races[0].explain()
    assert "re-recorded on 'schedule'" in text
    assert "the fence on 'forward' was gone" in text


def test_re_record_on_a_stream_already_ordered_after_the_write_keeps_the_order(hb):
    # Not a false alarm: the new capture on 'schedule' includes what schedule waited for.
    fwd, sched, d2h = hb.new_stream("forward"), hb.new_stream("schedule"), hb.new_stream("d2h")
    buf = hb.allocate(16, "buf")
    ev = hb.new_event("publish_ready")
    hb.launch(fwd, "index_put_", [(buf, 0, 16, WRITE)])
    hb.record(ev, fwd)
    hb.wait(sched, ev)
    hb.record(ev, sched)
    hb.wait(d2h, ev)
    hb.launch(d2h, "copy_", [(buf, 0, 16, READ)])
    assert hb.races == []


def test_wait_before_re_record_keeps_the_first_fence(hb):
    fwd, sched, d2h = hb.new_stream("forward"), hb.new_stream("schedule"), hb.new_stream("d2h")
    buf = hb.allocate(16, "buf")
    ev = hb.new_event("publish_ready")
    hb.launch(fwd, "index_put_", [(buf, 0, 16, WRITE)])
    hb.record(ev, fwd)
    hb.wait(d2h, ev)
    hb.record(ev, sched)  # too late to affect the wait already issued
    hb.launch(d2h, "copy_", [(buf, 0, 16, READ)])
    assert hb.races == []


# --- wait orders after the capture *at wait time* ---------------------------------------------


def test_record_issued_after_the_wait_does_not_help(hb):
    fwd, d2h = hb.new_stream("forward"), hb.new_stream("d2h")
    buf = hb.allocate(16, "buf")
    ev = hb.new_event("publish_ready")
    hb.record(ev, fwd)  # old capture: forward at op #0
    hb.launch(fwd, "index_put_", [(buf, 0, 16, WRITE)])
    hb.wait(d2h, ev)  # waits on the old capture
    hb.record(ev, fwd)  # the record meant to be waited on, issued too late
    hb.launch(d2h, "copy_", [(buf, 0, 16, READ)])
    assert pairs(hb) == [("index_put_", "forward", "copy_", "d2h")]
    assert "recorded on 'forward' at op #0, before the write" in hb.races[0].explain()


def test_waiting_on_a_never_recorded_event_is_a_no_op(hb):
    fwd, d2h = hb.new_stream("forward"), hb.new_stream("d2h")
    buf = hb.allocate(16, "buf")
    ev = hb.new_event("publish_ready")
    hb.launch(fwd, "index_put_", [(buf, 0, 16, WRITE)])
    hb.wait(d2h, ev)  # no-op: never recorded
    hb.record(ev, fwd)
    hb.launch(d2h, "copy_", [(buf, 0, 16, READ)])
    assert pairs(hb) == [("index_put_", "forward", "copy_", "d2h")]
    text = hb.races[0].explain()
    assert "before the event was ever recorded" in text
    assert "waiting on a never-recorded event is a no-op" in text


def test_sync_on_a_never_recorded_event_is_a_no_op(hb):
    d2h = hb.new_stream("d2h")
    pinned = hb.allocate(16, "pinned", space="host")
    ev = hb.new_event("copied")
    hb.launch(d2h, "copy_ D2H", [(pinned, 0, 16, WRITE)])
    hb.sync_event(ev)
    hb.host_access("tolist", [(pinned, 0, 16, READ)])
    assert pairs(hb) == [("copy_ D2H", "d2h", "tolist", "host")]


# --- wait_stream ------------------------------------------------------------------------------


def test_wait_stream_orders_earlier_work_only(hb):
    a, b = hb.new_stream("a"), hb.new_stream("b")
    buf = hb.allocate(16, "buf")
    hb.launch(a, "w_before", [(buf, 0, 8, WRITE)])
    hb.wait_stream(b, a)
    hb.launch(a, "w_after", [(buf, 8, 16, WRITE)])
    hb.launch(b, "r_before", [(buf, 0, 8, READ)])
    assert hb.races == []
    hb.launch(b, "r_after", [(buf, 8, 16, READ)])
    assert pairs(hb) == [("w_after", "a", "r_after", "b")]


def test_wait_stream_is_one_way(hb):
    a, b = hb.new_stream("a"), hb.new_stream("b")
    buf = hb.allocate(16, "buf")
    hb.launch(b, "b_reads", [(buf, 0, 16, READ)])
    hb.wait_stream(b, a)  # b waits a, not the other way round
    hb.launch(a, "a_writes", [(buf, 0, 16, WRITE)])
    assert pairs(hb) == [("b_reads", "b", "a_writes", "a")]


# --- host syncs --------------------------------------------------------------------------------

SYNCS = {
    # name: how the host learns that the D2H copy finished
    "stream.synchronize": lambda hb, d2h, ev: hb.sync_stream(d2h),
    "stream.query-True": lambda hb, d2h, ev: hb.sync_stream(d2h),
    "event.synchronize": lambda hb, d2h, ev: hb.sync_event(ev),
    "event.query-True": lambda hb, d2h, ev: hb.sync_event(ev),
    "cuda.synchronize": lambda hb, d2h, ev: hb.sync_device(),
}


@pytest.mark.parametrize("sync", list(SYNCS.values()), ids=list(SYNCS))
def test_host_sync_orders_host_read_after_d2h_copy(hb, sync):
    d2h = hb.new_stream("d2h")
    buf = hb.allocate(64, "buf")
    pinned = hb.allocate(64, "pinned", space="host")
    done = hb.new_event("copied")
    hb.launch(d2h, "copy_ D2H", [(buf, 0, 64, READ), (pinned, 0, 64, WRITE)])
    hb.record(done, d2h)
    sync(hb, d2h, done)
    hb.host_access("tolist", [(pinned, 0, 64, READ)])
    assert hb.races == []


def test_host_read_of_pinned_after_non_blocking_d2h_without_sync_races(hb):
    d2h = hb.new_stream("d2h")
    buf = hb.allocate(64, "buf")
    pinned = hb.allocate(64, "pinned", space="host")
    hb.launch(d2h, "copy_ D2H", [(buf, 0, 64, READ), (pinned, 0, 64, WRITE)])
    hb.host_access("tolist", [(pinned, 8, 16, READ)])
    assert pairs(hb) == [("copy_ D2H", "d2h", "tolist", "host")]
    race = hb.races[0]
    assert race.alloc is pinned
    assert (race.later.start, race.later.stop) == (8, 16)
    assert "the host read this before synchronizing with 'd2h'" in race.explain()


def test_syncing_the_current_stream_does_not_cover_the_d2h_stream(hb):
    # .item()/.tolist() sync the *current* stream only.
    main, d2h = hb.new_stream("main"), hb.new_stream("d2h")
    pinned = hb.allocate(64, "pinned", space="host")
    hb.launch(d2h, "copy_ D2H", [(pinned, 0, 64, WRITE)])
    hb.sync_stream(main)
    hb.host_access("tolist", [(pinned, 0, 64, READ)])
    assert pairs(hb) == [("copy_ D2H", "d2h", "tolist", "host")]


def test_event_sync_covers_work_up_to_the_record_only(hb):
    d2h = hb.new_stream("d2h")
    pinned = hb.allocate(64, "pinned", space="host")
    done = hb.new_event("copied")
    hb.launch(d2h, "copy first half", [(pinned, 0, 32, WRITE)])
    hb.record(done, d2h)
    hb.launch(d2h, "copy second half", [(pinned, 32, 64, WRITE)])
    hb.sync_event(done)
    hb.host_access("read first half", [(pinned, 0, 32, READ)])
    assert hb.races == []
    hb.host_access("read second half", [(pinned, 32, 64, READ)])
    assert pairs(hb) == [("copy second half", "d2h", "read second half", "host")]


def test_stream_sync_covers_the_waits_queued_on_it(hb):
    # stream.synchronize() returns after the stream's wait_event completed, i.e. after the
    # work the event fenced on the other stream.
    fwd, d2h = hb.new_stream("forward"), hb.new_stream("d2h")
    pinned = hb.allocate(16, "pinned", space="host")
    ev = hb.new_event("ready")
    hb.launch(fwd, "copy_ D2H", [(pinned, 0, 16, WRITE)])
    hb.record(ev, fwd)
    hb.wait(d2h, ev)
    hb.sync_stream(d2h)
    hb.host_access("tolist", [(pinned, 0, 16, READ)])
    assert hb.races == []


def test_host_overwrite_of_staging_before_h2d_ran_races(hb):
    h2d = hb.new_stream("h2d")
    staging = hb.allocate(32, "staging", space="host")
    dev = hb.allocate(32, "input_ids")
    hb.host_access("fill step 1", [(staging, 0, 32, WRITE)])
    hb.launch(h2d, "copy_ H2D", [(staging, 0, 32, READ), (dev, 0, 32, WRITE)])
    hb.host_access("fill step 2", [(staging, 0, 32, WRITE)])
    assert pairs(hb) == [("copy_ H2D", "h2d", "fill step 2", "host")]
    race = hb.races[0]
    assert not race.earlier.is_write and race.later.is_write
    assert "pinned staging buffer" in race.explain()


@pytest.mark.parametrize("sync", ["stream", "event", "device"])
def test_host_overwrite_of_staging_after_sync_is_silent(hb, sync):
    h2d = hb.new_stream("h2d")
    staging = hb.allocate(32, "staging", space="host")
    dev = hb.allocate(32, "input_ids")
    done = hb.new_event("h2d_done")
    hb.host_access("fill step 1", [(staging, 0, 32, WRITE)])
    hb.launch(h2d, "copy_ H2D", [(staging, 0, 32, READ), (dev, 0, 32, WRITE)])
    hb.record(done, h2d)
    {"stream": lambda: hb.sync_stream(h2d), "event": lambda: hb.sync_event(done),
     "device": hb.sync_device}[sync]()
    hb.host_access("fill step 2", [(staging, 0, 32, WRITE)])
    assert hb.races == []


# --- the default stream is just another stream -----------------------------------------------


def test_default_stream_and_side_stream_are_unordered(hb):
    default, side = hb.new_stream("default"), hb.new_stream("side")
    buf = hb.allocate(64, "buf")
    hb.launch(default, "zero_", [(buf, 0, 64, WRITE)])
    hb.launch(side, "index_put_", [(buf, 8, 16, WRITE)])
    assert pairs(hb) == [("zero_", "default", "index_put_", "side")]


def test_side_stream_after_wait_stream_on_default_is_silent(hb):
    default, side = hb.new_stream("default"), hb.new_stream("side")
    buf = hb.allocate(64, "buf")
    hb.launch(default, "zero_", [(buf, 0, 64, WRITE)])
    hb.wait_stream(side, default)
    hb.launch(side, "index_put_", [(buf, 8, 16, WRITE)])
    assert hb.races == []


# --- caching allocator: free + reuse -------------------------------------------------------------


def _tmp_read_by_side(hb, nbytes=256):
    """A temporary allocated on 'main', written there, read by 'side' after a wait."""
    main, side = hb.new_stream("main"), hb.new_stream("side")
    tmp = hb.allocate(nbytes, "tmp", stream=main, address=0x1000)
    hb.launch(main, "fill_", [(tmp, 0, nbytes, WRITE)])
    hb.wait_stream(side, main)
    hb.launch(side, "side reads tmp", [(tmp, 0, nbytes, READ)])
    return main, side, tmp


def test_reuse_without_record_stream_races(hb):
    main, side, tmp = _tmp_read_by_side(hb)
    assert hb.races == []
    hb.free(tmp)
    new = hb.allocate(256, "new", stream=main, address=0x1000)
    hb.launch(main, "overwrite new", [(new, 0, 256, WRITE)])
    assert pairs(hb) == [("side reads tmp", "side", "overwrite new", "main")]
    race = hb.races[0]
    assert race.alloc is new and race.earlier.alloc is tmp
    text = str(race)
    assert "reused block of: tmp" in text
    assert "record_stream" in race.explain()
    assert "tmp was freed" in race.explain()


def test_reuse_after_record_stream_is_silent(hb):
    main, side, tmp = _tmp_read_by_side(hb)
    hb.record_stream(tmp, side)
    hb.free(tmp)
    new = hb.allocate(256, "new", stream=main, address=0x1000)
    hb.launch(main, "overwrite new", [(new, 0, 256, WRITE)])
    assert hb.races == []


def test_record_stream_on_the_allocation_stream_is_no_fence(hb):
    # PyTorch's caching allocator ignores record_stream(s) when s is the stream the block
    # was allocated on (reuse on that stream is FIFO-ordered anyway). So it must not hide
    # that the next owner, used on another stream without waiting, races with main's work.
    main, side = hb.new_stream("main"), hb.new_stream("side")
    tmp = hb.allocate(64, "tmp", stream=main, address=0x1000)
    hb.launch(main, "main writes tmp", [(tmp, 0, 64, WRITE)])
    hb.record_stream(tmp, main)
    hb.free(tmp)
    new = hb.allocate(64, "new", stream=main, address=0x1000)
    hb.launch(main, "main writes new", [(new, 0, 8, WRITE)])  # FIFO: fine
    assert hb.races == []
    hb.launch(side, "side writes new", [(new, 8, 16, WRITE)])  # never waited main
    assert pairs(hb) == [("main writes tmp", "main", "side writes new", "side")]
    assert "record_stream" in hb.races[0].explain()


def test_record_stream_on_the_wrong_stream_does_not_fence(hb):
    main, side, other = hb.new_stream("main"), hb.new_stream("side"), hb.new_stream("other")
    tmp = hb.allocate(64, "tmp", stream=main, address=0x1000)
    hb.launch(side, "side reads tmp", [(tmp, 0, 64, READ)])
    hb.launch(other, "other works", [])
    hb.record_stream(tmp, other)  # 'other' never waited for 'side'
    hb.free(tmp)
    new = hb.allocate(64, "new", stream=main, address=0x1000)
    hb.launch(main, "overwrite new", [(new, 0, 64, WRITE)])
    assert pairs(hb) == [("side reads tmp", "side", "overwrite new", "main")]


def test_record_stream_fences_only_work_queued_before_the_free(hb):
    main, side, tmp = _tmp_read_by_side(hb)
    hb.record_stream(tmp, side)  # recorded here, but the fence is taken at free time
    hb.launch(side, "second read", [(tmp, 0, 8, READ)])
    hb.free(tmp)
    new = hb.allocate(256, "new", stream=main, address=0x1000)
    hb.launch(main, "overwrite new", [(new, 0, 256, WRITE)])
    assert hb.races == []  # both reads were queued on 'side' before the free


def test_reuse_at_another_address_or_space_is_silent(hb):
    main, side, tmp = _tmp_read_by_side(hb)
    hb.free(tmp)
    elsewhere = hb.allocate(256, "elsewhere", stream=main, address=0x1100)  # adjacent, disjoint
    pinned = hb.allocate(256, "pinned", space="host", address=0x1000)  # another address space
    hb.launch(main, "write", [(elsewhere, 0, 256, WRITE)])
    hb.host_access("host write", [(pinned, 0, 256, WRITE)])
    assert hb.races == []


def test_reuse_of_a_split_block_maps_byte_ranges(hb):
    main, side = hb.new_stream("main"), hb.new_stream("side")
    big = hb.allocate(256, "big", stream=main, address=0x1000)
    hb.launch(side, "side reads head", [(big, 0, 64, READ)])
    hb.launch(side, "side reads tail", [(big, 192, 256, READ)])
    hb.free(big)
    # The allocator splits the block: 'upper' gets bytes [128, 256) of the old one.
    upper = hb.allocate(128, "upper", stream=main, address=0x1000 + 128)
    hb.launch(main, "write upper[0:64]", [(upper, 0, 64, WRITE)])  # old [128, 192): unused
    assert hb.races == []
    hb.launch(main, "write upper[32:128]", [(upper, 32, 128, WRITE)])  # old [160, 256)
    assert pairs(hb) == [("side reads tail", "side", "write upper[32:128]", "main")]
    race = hb.races[0]
    # The old access is shown in the new allocation's coordinates.
    assert (race.earlier.start, race.earlier.stop) == (64, 128)
    # The rest of the old block is still free; the next allocation there sees the head read.
    lower = hb.allocate(128, "lower", stream=main, address=0x1000)
    hb.launch(main, "write lower[64:128]", [(lower, 64, 128, WRITE)])  # old [64, 128): unused
    assert len(hb.races) == 1
    hb.launch(main, "write lower[0:8]", [(lower, 0, 8, WRITE)])
    assert pairs(hb)[1] == ("side reads head", "side", "write lower[0:8]", "main")


def test_reuse_of_a_merged_block_sees_every_freed_piece(hb):
    main, side = hb.new_stream("main"), hb.new_stream("side")
    a = hb.allocate(64, "a", stream=main, address=0x1000)
    b = hb.allocate(64, "b", stream=main, address=0x1040)
    hb.launch(side, "read a", [(a, 0, 64, READ)])
    hb.launch(side, "read b", [(b, 0, 64, READ)])
    hb.free(a)
    hb.free(b)
    merged = hb.allocate(128, "merged", stream=main, address=0x1000)
    hb.launch(main, "write a part", [(merged, 0, 8, WRITE)])
    hb.launch(main, "write b part", [(merged, 120, 128, WRITE)])
    assert pairs(hb) == [("read a", "side", "write a part", "main"),
                         ("read b", "side", "write b part", "main")]


def test_record_stream_on_an_intermediate_owner_fences_the_older_access(hb):
    # old [0, 100) is read on 's' and freed without record_stream; 'mid' reuses its first
    # 50 bytes, is used on 's' (FIFO after the read) with record_stream(s), and is freed.
    # 'new' reuses the merged block: its bytes [0, 50) were handed out only after the
    # record_stream fence on 's', which covers the old read. Bytes [50, 100) were not.
    s, u = hb.new_stream("s"), hb.new_stream("u")
    old = hb.allocate(100, "old", address=0)
    hb.launch(s, "read old", [(old, 0, 10, READ), (old, 90, 100, READ)])
    hb.free(old)
    mid = hb.allocate(50, "mid", address=0)
    hb.launch(s, "write mid", [(mid, 0, 50, WRITE)])
    hb.record_stream(mid, s)
    hb.free(mid)
    new = hb.allocate(100, "new", address=0)
    hb.launch(u, "write new head", [(new, 0, 10, WRITE)])
    assert hb.races == []
    hb.launch(u, "write new tail", [(new, 90, 100, WRITE)])
    assert pairs(hb) == [("read old", "s", "write new tail", "u")]


def test_report_names_the_tensor_the_earlier_access_touched(hb):
    # A race carried through two reuses names the tensor that was read, the one that
    # needed record_stream, not the block's intermediate owner.
    s, u = hb.new_stream("s"), hb.new_stream("u")
    first = hb.allocate(64, "first", address=0)
    hb.launch(s, "read first", [(first, 0, 64, READ)])
    hb.free(first)
    second = hb.allocate(64, "second", address=0)
    hb.free(second)
    third = hb.allocate(64, "third", address=0)
    hb.launch(u, "write third", [(third, 0, 64, WRITE)])
    assert pairs(hb) == [("read first", "s", "write third", "u")]
    race = hb.races[0]
    assert race.earlier.alloc is first
    assert race.explain().startswith("first was freed")


# --- memory: byte ranges, views, zero-size, read-read ------------------------------------------


@pytest.mark.parametrize(
    "later, races",
    [((0, 64), False), ((128, 256), False), ((64, 65), True), ((127, 128), True),
     ((56, 72), True), ((0, 256), True)],
    ids=["disjoint-before", "disjoint-after", "first-byte", "last-byte", "straddles", "covers"],
)
def test_offset_views_conflict_exactly_when_byte_ranges_overlap(hb, later, races):
    a, b = hb.new_stream("a"), hb.new_stream("b")
    buf = hb.allocate(256, "buf")
    hb.launch(a, "write view buf[64:128]", [(buf, 64, 128, WRITE)])
    hb.launch(b, "write other view", [(buf, *later, WRITE)])
    assert pairs(hb) == ([("write view buf[64:128]", "a", "write other view", "b")]
                         if races else [])


def test_distinct_allocations_never_conflict(hb):
    a, b = hb.new_stream("a"), hb.new_stream("b")
    x, y = hb.allocate(64, "x"), hb.allocate(64, "y")
    hb.launch(a, "wx", [(x, 0, 64, WRITE)])
    hb.launch(b, "wy", [(y, 0, 64, WRITE)])
    assert hb.races == []


def test_zero_size_accesses_touch_nothing(hb):
    a, b = hb.new_stream("a"), hb.new_stream("b")
    buf = hb.allocate(64, "buf")
    empty = hb.allocate(0, "empty")
    hb.launch(a, "write", [(buf, 0, 64, WRITE), (empty, 0, 0, WRITE)])
    hb.launch(b, "index_put_ nothing", [(buf, 8, 8, WRITE), (buf, 64, 64, WRITE),
                                         (empty, 0, 0, WRITE)])
    hb.host_access("read nothing", [(buf, 0, 0, READ)])
    assert hb.races == []
    assert hb.accesses == 1
    assert buf.shadow and all(acc.op == "write" for acc in buf.shadow)


@pytest.mark.parametrize("third", ["stream", "host"])
def test_read_read_never_races(hb, third):
    a, b = hb.new_stream("a"), hb.new_stream("b")
    buf = hb.allocate(64, "buf", space="host")
    hb.launch(a, "read a", [(buf, 0, 64, READ)])
    hb.launch(b, "read b", [(buf, 0, 32, READ)])
    if third == "host":
        hb.host_access("read host", [(buf, 16, 48, READ)])
    else:
        hb.launch(hb.new_stream("c"), "read c", [(buf, 16, 48, READ)])
    assert hb.races == []


def test_write_after_unordered_reads_reports_the_first_reader(hb):
    a, b, c = hb.new_stream("a"), hb.new_stream("b"), hb.new_stream("c")
    buf = hb.allocate(64, "buf")
    hb.launch(a, "read a", [(buf, 0, 64, READ)])
    hb.launch(b, "read b", [(buf, 0, 64, READ)])
    hb.wait_stream(c, b)
    hb.launch(c, "write c", [(buf, 0, 64, WRITE)])
    # ordered after b's read, not after a's
    assert pairs(hb) == [("read a", "a", "write c", "c")]


# --- transitivity -----------------------------------------------------------------------------


def test_transitive_chain_across_three_streams_is_silent(hb):
    s1, s2, s3 = hb.new_stream("s1"), hb.new_stream("s2"), hb.new_stream("s3")
    buf = hb.allocate(64, "buf")
    e1, e2 = hb.new_event("e1"), hb.new_event("e2")
    hb.launch(s1, "write", [(buf, 0, 64, WRITE)])
    hb.record(e1, s1)
    hb.wait(s2, e1)
    hb.record(e2, s2)  # s2 does no work of its own: the edge still chains
    hb.wait(s3, e2)
    hb.launch(s3, "read", [(buf, 0, 64, READ)])
    assert hb.races == []


def test_broken_chain_across_three_streams_races(hb):
    s1, s2, s3 = hb.new_stream("s1"), hb.new_stream("s2"), hb.new_stream("s3")
    buf = hb.allocate(64, "buf")
    e1, e2 = hb.new_event("e1"), hb.new_event("e2")
    hb.launch(s1, "write", [(buf, 0, 64, WRITE)])
    hb.record(e1, s1)
    hb.record(e2, s2)  # recorded before s2 waits e1: the chain is broken
    hb.wait(s2, e1)
    hb.wait(s3, e2)
    hb.launch(s3, "read", [(buf, 0, 64, READ)])
    assert pairs(hb) == [("write", "s1", "read", "s3")]


def test_chain_through_host_sync_and_launch_is_silent(hb):
    s1, s3 = hb.new_stream("s1"), hb.new_stream("s3")
    buf = hb.allocate(64, "buf")
    ev = hb.new_event("e")
    hb.launch(s1, "write", [(buf, 0, 64, WRITE)])
    hb.record(ev, s1)
    hb.sync_event(ev)
    hb.launch(s3, "read", [(buf, 0, 64, READ)])
    assert hb.races == []


# --- errors: fail loudly ------------------------------------------------------------------------


@pytest.mark.parametrize("start, stop", [(-1, 4), (0, 65), (60, 70), (8, 4)])
def test_byte_range_outside_allocation_is_an_error(hb, start, stop):
    s = hb.new_stream("s")
    buf = hb.allocate(64, "seq_lens")
    with pytest.raises(ValueError, match=rf"index_put_: byte range \[{start}, {stop}\) is outside "
                                          r"seq_lens \(64 bytes\)"):
        hb.launch(s, "index_put_", [(buf, start, stop, WRITE)])


def test_host_byte_range_outside_allocation_is_an_error(hb):
    buf = hb.allocate(8, "pinned", space="host")
    with pytest.raises(ValueError, match="outside pinned"):
        hb.host_access("tolist", [(buf, 0, 9, READ)])


def test_access_after_free_is_an_error(hb):
    s = hb.new_stream("s")
    buf = hb.allocate(64, "tmp")
    hb.free(buf)
    with pytest.raises(ValueError, match="copy_ accesses tmp after it was freed"):
        hb.launch(s, "copy_", [(buf, 0, 8, READ)])
    with pytest.raises(ValueError, match="after it was freed"):
        hb.host_access("tolist", [(buf, 0, 8, READ)])


def test_free_twice_is_an_error(hb):
    buf = hb.allocate(64, "tmp")
    hb.free(buf)
    with pytest.raises(ValueError, match="tmp freed twice"):
        hb.free(buf)


def test_record_stream_after_free_is_an_error(hb):
    s = hb.new_stream("s")
    buf = hb.allocate(64, "tmp")
    hb.free(buf)
    with pytest.raises(ValueError, match="record_stream on tmp"):
        hb.record_stream(buf, s)


@pytest.mark.parametrize("name", ["forward", "host"])
def test_duplicate_stream_name_is_an_error(hb, name):
    hb.new_stream("forward")
    with pytest.raises(ValueError, match=f"a stream named '{name}' already exists"):
        hb.new_stream(name)


def test_negative_allocation_size_is_an_error(hb):
    with pytest.raises(ValueError, match="allocation size must be >= 0"):
        hb.allocate(-1, "bad")


@pytest.mark.parametrize("call", ["launch", "record", "wait", "wait_stream", "sync_stream",
                                  "record_stream"])
def test_using_the_host_as_a_stream_is_an_error(hb, call):
    s = hb.new_stream("s")
    buf = hb.allocate(8, "buf")
    ev = hb.new_event()
    do = {
        "launch": lambda: hb.launch(hb.host, "add_", [(buf, 0, 8, WRITE)]),
        "record": lambda: hb.record(ev, hb.host),
        "wait": lambda: hb.wait(hb.host, ev),
        "wait_stream": lambda: hb.wait_stream(s, hb.host),
        "sync_stream": lambda: hb.sync_stream(hb.host),
        "record_stream": lambda: hb.record_stream(buf, hb.host),
    }[call]
    with pytest.raises(ValueError, match="the host is not a stream"):
        do()


def test_something_else_than_a_stream_is_rejected(hb):
    with pytest.raises(TypeError, match="expected a stream of this model"):
        hb.sync_stream("forward")


def test_race_stacks_leave_out_hypothesis_and_pytest_frames():
    """A @given test runs inside Hypothesis' engine, a test inside pytest: a report's stack
    (Site.user_lines) and its source line (Site.location, Site.key) show only user code."""
    import _pytest.python
    import hypothesis.core

    from pytest_streamorder.model import Site

    def user_code():
        pass

    hyp = hypothesis.core.StateForActualGivenExecution.execute_once.__code__
    runner = _pytest.python.pytest_pyfunc_call.__code__
    site = Site(((hyp, 10), (user_code.__code__, 42), (runner, 20), (hyp, 11)))
    assert site.user_lines() == [site.lines()[1]]
    assert site.user_lines()[0].endswith(":42 in user_code")
    assert site.location() == site.user_lines()[0]
    assert site.key() == (user_code.__code__.co_filename, 42)


# --- a dropped stream's clock slot goes to the next new stream --------------------------


def test_a_stream_is_retired_only_once_the_host_knows_all_its_work(hb):
    old = hb.new_stream("old")
    buf = hb.allocate(64, "buf")
    hb.launch(old, "write", [(buf, 0, 64, WRITE)])
    assert not hb.retire(old)  # the host has not synced it: its slot stays its own
    hb.sync_stream(old)
    assert hb.retire(old)
    assert hb.streams() == []
    with pytest.raises(ValueError, match="retired"):
        hb.launch(old, "late", [])


def test_a_new_stream_in_a_retired_slot_is_ordered_after_its_work_and_races_like_any(hb):
    old = hb.new_stream("old")
    buf = hb.allocate(64, "buf")
    hb.launch(old, "write", [(buf, 0, 64, WRITE)])
    hb.sync_stream(old)
    hb.retire(old)
    new, other = hb.new_stream("new"), hb.new_stream("other")
    assert new.id == old.id and other.id == old.id + 1 and len(hb.agents) == 3
    hb.launch(new, "read", [(buf, 0, 64, READ)])  # after the host's sync: no race
    assert hb.races == []
    hb.launch(other, "write2", [(buf, 0, 32, WRITE)])  # unordered with the new stream's read
    assert pairs(hb) == [("read", "new", "write2", "other")]


def test_a_race_explanation_tells_a_retired_stream_from_its_slots_new_owner(hb):
    old = hb.new_stream("old")
    ev = hb.new_event("ev")
    hb.record(ev, old)  # recorded on the old stream only
    hb.sync_stream(old)
    hb.retire(old)
    new, reader = hb.new_stream("new"), hb.new_stream("reader")
    buf = hb.allocate(64, "buf")
    hb.launch(new, "write", [(buf, 0, 64, WRITE)])
    hb.wait(reader, ev)  # waits on the old capture: orders nothing about `new`
    hb.launch(reader, "read", [(buf, 0, 64, READ)])
    (race,) = hb.races
    assert race.earlier.agent is new
    assert "before the event was ever recorded" not in str(race)
    assert "re-recorded" not in str(race)
