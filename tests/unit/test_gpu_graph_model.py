"""The GPU backend's CUDA-graph bookkeeping (gpu/graphs.py) on the model alone, so it is
checked without a GPU: captured work is held back, and a replay is fed as the captured
ops on the replay stream, with the captured fork/join edges and pool allocations."""

from __future__ import annotations

import pytest

from pytest_streamorder.gpu.graphs import CapturingModel, GraphRecord, _feed_replay, _finish
from pytest_streamorder.model import HappensBefore, Pending, Site
from pytest_streamorder.ops.capture import Capture
from pytest_streamorder.ops.limit import OpCounter


class FakeBackend:
    def __init__(self):
        self.hb = CapturingModel(HappensBefore())
        self.op_counter = OpCounter(None)
        self.current = None

    def _current_agent(self):
        return self.current


def _capture(be, origin, name="g"):
    rec = GraphRecord()
    rec.capture = Capture(name, origin, "global", 0, "here")
    be.hb.captures[origin] = (rec.capture, rec)
    return rec


def _end(be, rec):
    capture, rec.capture = rec.capture, None
    be.hb.end(capture)
    _finish(be, rec, capture)


def test_captured_work_is_not_work_and_a_replay_is():
    be = FakeBackend()
    hb = be.hb
    cap, host_side, sched = hb.new_stream("cap"), hb.new_stream("fwd"), hb.new_stream("sched")
    buf = hb.allocate(64, "static_in", address=0x1000)
    rec = _capture(be, cap)
    assert hb.launch(cap, "mul", [(buf, 0, 64, False)]) == []
    _end(be, rec)
    hb.launch(sched, "fill_", [(buf, 0, 64, True)])  # the captured read never ran
    assert not hb.races
    hb.sync_stream(sched)
    be.current = host_side
    _feed_replay(be, rec, Site.here())
    assert not hb.races  # the replay launch carries the host's past: after the fill
    hb.launch(sched, "fill_", [(buf, 0, 64, True)])  # next step's input, no WAR edge
    assert len(hb.races) == 1
    assert "replay of CUDA graph 'g'" in str(hb.races[0])


def test_forked_stream_replays_on_a_lane_with_the_captured_edges():
    be = FakeBackend()
    hb = be.hb
    cap, side, fwd = hb.new_stream("cap"), hb.new_stream("side"), hb.new_stream("fwd")
    a = hb.allocate(64, "a", address=0x1000)
    out = hb.allocate(64, "out", address=0x2000)
    rec = _capture(be, cap)
    fork, join = hb.new_event("fork"), hb.new_event("join")
    hb.record(fork, cap)
    hb.wait(side, fork)  # side joins the capture
    assert side in hb.captures
    hb.launch(side, "mul", [(a, 0, 64, False), (out, 0, 64, True)])
    hb.record(join, side)
    hb.wait(cap, join)
    hb.launch(cap, "add", [(out, 0, 64, False), (out, 0, 64, True)])
    assert rec.capture.unjoined() == []
    _end(be, rec)
    assert side not in hb.captures and [lane.name for lane in rec.lanes] == ["g.side"]
    be.current = fwd
    for _ in range(2):
        _feed_replay(be, rec, Site.here())
    assert not hb.races  # lane work is fenced by the captured fork and join


def test_unjoined_fork_is_seen():
    be = FakeBackend()
    hb = be.hb
    cap, side = hb.new_stream("cap"), hb.new_stream("side")
    rec = _capture(be, cap)
    fork = hb.new_event("fork")
    hb.record(fork, cap)
    hb.wait(side, fork)
    hb.launch(side, "k", [])
    assert rec.capture.unjoined() == [side]


def test_pool_block_keeps_one_allocation_across_captures_and_frees():
    be = FakeBackend()
    hb = be.hb
    cap = hb.new_stream("cap")
    rec1 = _capture(be, cap, "g1")
    tmp = hb.allocate(64, "tmp", stream=cap, address=0x5000)
    hb.launch(cap, "mul", [(tmp, 0, 64, True)])
    hb.free(tmp)  # into the pool: the model keeps it for replays
    assert not tmp.freed
    _end(be, rec1)
    rec2 = _capture(be, cap, "g2")
    out = hb.allocate(64, "out2", stream=cap, address=0x5000)
    assert out is tmp  # the same block: one allocation, so replays of g1 and g2 meet
    hb.launch(cap, "mul", [(out, 0, 64, True)])
    _end(be, rec2)
    s1, s2 = hb.new_stream("s1"), hb.new_stream("s2")
    be.current = s1
    _feed_replay(be, rec1, Site.here())
    be.current = s2
    _feed_replay(be, rec2, Site.here())
    assert len(hb.races) == 1


def test_indexed_access_of_a_replay_is_unknown_not_a_false_alarm():
    be = FakeBackend()
    hb = be.hb
    cap, other = hb.new_stream("cap"), hb.new_stream("other")
    cache = hb.allocate(64, "cache", address=0x1000)
    rec = _capture(be, cap)
    pending = Pending(0, 64)
    hb.launch(cap, "index_put_", [(cache, pending, True)])
    hb.resolve(pending, None)  # what device_op does while capturing
    _end(be, rec)
    be.current = hb.new_stream("fwd")
    _feed_replay(be, rec, Site.here())
    hb.launch(other, "fill_", [(cache, 56, 64, True)])  # a slot the replay may not touch
    assert not hb.races
