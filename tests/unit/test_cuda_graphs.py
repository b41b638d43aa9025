"""CUDA graphs on the virtual device: capture records without running, replay issues the
captured ops again on the replay stream (values computed from the static buffers as they
are then, accesses checked like any kernel's), graph pools, and the calls CUDA forbids
during a capture."""

from __future__ import annotations

import pytest
import torch

import pytest_streamorder as so
from pytest_streamorder.errors import NotModelledError, StreamRaceError
from pytest_streamorder.sim.graphs import GraphCaptureError

pytest_plugins = ["pytester"]

SCHEDULES = [("random", s) for s in range(4)] + [("delay", s) for s in range(3)] + [("lazy", 0)]


def _weights():
    return torch.arange(12.0).reshape(4, 3) / 10


def _decode_loop(steps: int, war_barrier: bool):
    """SGLang's overlap pattern, small: the schedule stream writes the next step's input
    into the graph's static buffer while the forward stream replays the graph."""
    w = _weights().cuda()
    static_in = torch.zeros(2, 4, device="cuda")
    sched, fwd = torch.cuda.Stream(), torch.cuda.Stream()
    # warm up on a side stream, then capture (the documented pattern)
    fwd.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(fwd):
        (static_in @ w).relu_()
    torch.cuda.current_stream().wait_stream(fwd)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_out = (static_in @ w).relu_() + 1
    ready, done = torch.cuda.Event(), torch.cuda.Event()
    outs = []
    for step in range(steps):
        host = torch.full((2, 4), float(step)) - 1
        with torch.cuda.stream(sched):
            if war_barrier and step > 0:
                sched.wait_event(done)  # the previous replay has read static_in
            static_in.copy_(host.cuda(non_blocking=True))
            ready.record()
        with torch.cuda.stream(fwd):
            fwd.wait_event(ready)
            g.replay()
            done.record()
            outs.append(static_out.clone())
    torch.cuda.synchronize()
    return [o.cpu() for o in outs]


def _expected(steps: int):
    w = _weights()
    return [((torch.full((2, 4), float(s)) - 1) @ w).relu_() + 1 for s in range(steps)]


@pytest.mark.parametrize("policy,seed", SCHEDULES)
def test_decode_loop_with_war_barrier_is_silent_and_right(policy, seed):
    with so.virtual_device(seed=seed, policy=policy) as vd:
        outs = _decode_loop(4, war_barrier=True)
    assert not vd.races
    for got, want in zip(outs, _expected(4)):
        torch.testing.assert_close(got, want)


def test_missing_war_barrier_is_a_race_naming_the_replay():
    with so.virtual_device(seed=0, policy="random") as vd:
        with pytest.raises(StreamRaceError) as info:
            _decode_loop(3, war_barrier=False)
    text = str(info.value)
    assert "stream-order race on 'static_in'" in text
    assert "read by stream 'fwd'" in text and "write by stream 'sched'" in text
    assert "[replay of CUDA graph 'g', captured at" in text
    assert len(vd.races) == 1


def test_capture_runs_nothing_and_allocates_from_the_graph_pool():
    with so.virtual_device(seed=0, policy="eager") as vd:
        x = torch.ones(4, device="cuda")
        g = torch.cuda.CUDAGraph()
        issued = vd.ops_issued
        with torch.cuda.graph(g):
            y = x * 3
        assert vd.ops_issued == issued  # captured, not issued
        assert torch.isnan(y.cpu()).all()  # poison: nothing ran yet
        assert y._vs.block.pool is vd.graphs.pools[g.pool()]
        g.replay()
        assert y.tolist() == [3.0] * 4
        x.fill_(2)
        g.replay()
        assert y.tolist() == [6.0] * 4


def test_is_current_stream_capturing_and_default_stream_rules():
    with so.virtual_device(seed=0, policy="random") as vd:
        assert torch.cuda.is_current_stream_capturing() is False
        g = torch.cuda.CUDAGraph()
        with pytest.raises(RuntimeError, match="captured on a non-default stream"):
            g.capture_begin()
        x = torch.zeros(2, device="cuda")
        with torch.cuda.graph(g):
            assert torch.cuda.is_current_stream_capturing() is True
            assert torch._C._cuda_isCurrentStreamCapturing() is True
            assert torch.cuda.current_stream() != torch.cuda.default_stream()
            x.add_(1)
        assert torch.cuda.is_current_stream_capturing() is False
        g.replay()  # replaying on the default stream is fine
        assert x.tolist() == [1.0, 1.0]
        assert not vd.races


@pytest.mark.parametrize("call,what", [
    (lambda x: torch.cuda.synchronize(), "torch.cuda.synchronize()"),
    (lambda x: x.sum().item(), "a host sync on stream 'graph_capture'"),
    (lambda x: x.cpu(), "a host sync on stream 'graph_capture'"),
    (lambda x: x[x > 0], "a host sync on stream 'graph_capture'"),  # nonzero: data-dependent
    (lambda x: x.tolist(), "a host sync on stream 'graph_capture'"),
    (lambda x: torch.cuda.current_stream().synchronize(), "a host sync on stream"),
    (lambda x: torch.cuda.Event().query(), "Event.query()"),
    (lambda x: torch.cuda.current_stream().query(), "Stream.query()"),
    (lambda x: x.copy_(torch.ones(4)), "H2D copy_ from pageable host memory"),
])
def test_syncs_during_capture_raise_what_cuda_raises(call, what):
    with so.virtual_device(seed=0, policy="random") as vd:
        x = torch.zeros(4, device="cuda")
        g = torch.cuda.CUDAGraph()
        with pytest.raises(GraphCaptureError) as info:
            with torch.cuda.graph(g):
                x.add_(1)
                call(x)
        text = str(info.value)
        assert text.startswith("CUDA error: operation not permitted when stream is capturing "
                               "(cudaErrorStreamCaptureUnsupported)")
        assert what in text and "captures CUDA graph 'g'" in text
        assert "test_cuda_graphs.py" in text  # where the call was
        assert isinstance(info.value, RuntimeError)
        # the capture ended with the body's error; the device works on
        assert not torch.cuda.is_current_stream_capturing()
        assert torch.cuda.current_stream() == torch.cuda.default_stream()
        with pytest.raises(RuntimeError, match="without a preceding successful capture"):
            g.replay()
        x.add_(1)
        assert x.tolist() == [1.0] * 4
        assert not vd.races


def test_capture_end_after_an_illegal_call_reports_the_invalidated_capture():
    with so.virtual_device(seed=0, policy="random"):
        s = torch.cuda.Stream()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.stream(s):
            g.capture_begin()
            with pytest.raises(GraphCaptureError):
                torch.cuda.synchronize()
            with pytest.raises(GraphCaptureError, match="cudaErrorStreamCaptureInvalidated"):
                g.capture_end()
        assert not torch.cuda.is_current_stream_capturing()


def test_relaxed_mode_allows_syncing_other_streams_but_not_the_capture():
    with so.virtual_device(seed=0, policy="random"):
        other = torch.cuda.Stream()
        with torch.cuda.stream(other):
            y = torch.ones(2, device="cuda") * 5
        g = torch.cuda.CUDAGraph()
        x = torch.zeros(2, device="cuda")
        with torch.cuda.graph(g, capture_error_mode="relaxed"):
            x.add_(1)
            other.synchronize()  # unrelated stream: allowed in relaxed mode
        with pytest.raises(GraphCaptureError, match="Stream.query"):
            with torch.cuda.graph(g2 := torch.cuda.CUDAGraph(), capture_error_mode="relaxed"):
                torch.cuda.current_stream().query()
        assert g2 is not None and y.tolist() == [5.0, 5.0]
        with pytest.raises(GraphCaptureError, match="Event.query"):
            with torch.cuda.graph(torch.cuda.CUDAGraph(), capture_error_mode="global"):
                torch.cuda.Event().query()  # global: any query is unsafe


def test_default_stream_work_during_a_capture_is_an_error():
    with so.virtual_device(seed=0, policy="random"):
        x = torch.zeros(2, device="cuda")
        s = torch.cuda.Stream()
        g = torch.cuda.CUDAGraph()
        with pytest.raises(GraphCaptureError, match="cudaErrorStreamCaptureImplicit.*default stream"):
            with torch.cuda.graph(g, stream=s):
                with torch.cuda.stream(torch.cuda.default_stream()):
                    x.add_(1)


def test_fork_and_join_inside_a_capture_replays_with_the_same_edges():
    with so.virtual_device(seed=3, policy="random") as vd:
        a = torch.arange(4.0, device="cuda")
        side = torch.cuda.Stream()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            main = torch.cuda.current_stream()
            side.wait_stream(main)  # fork: side joins the capture
            with torch.cuda.stream(side):
                b = a * 10
            c = a + 1
            main.wait_stream(side)  # join
            out = b + c
        torch.cuda.synchronize()
        for k in range(3):
            a.fill_(float(k))
            g.replay()
            assert out.tolist() == [k * 10 + k + 1.0] * 4
        assert not vd.races
        assert any(".side" in s.name for s in vd._streams)  # the forked work's private stream


def test_fork_not_joined_back_fails_capture_end():
    with so.virtual_device(seed=0, policy="random"):
        a = torch.ones(4, device="cuda")
        side = torch.cuda.Stream()
        g = torch.cuda.CUDAGraph()
        with pytest.raises(GraphCaptureError, match="cudaErrorStreamCaptureUnjoined.*'side'"):
            with torch.cuda.graph(g):
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    a.mul_(2)


def test_waiting_on_an_event_from_outside_the_capture_is_an_error():
    with so.virtual_device(seed=0, policy="random"):
        other = torch.cuda.Stream()
        with torch.cuda.stream(other):
            torch.ones(2, device="cuda")
        g = torch.cuda.CUDAGraph()
        with pytest.raises(GraphCaptureError, match="cudaErrorStreamCaptureIsolation"):
            with torch.cuda.graph(g):
                torch.cuda.current_stream().wait_stream(other)


def test_pool_shared_by_two_graphs_aliases_and_replays_need_ordering():
    """SGLang captures every batch size into one pool: a block one capture freed is the next
    capture's memory, so the two graphs' replays touch the same bytes."""
    with so.virtual_device(seed=0, policy="random", raise_on_race=False) as vd:
        x = torch.arange(4.0, device="cuda")
        pool = torch.cuda.graph_pool_handle()
        g1, g2 = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(g1, pool=pool):
            tmp = x * 2
            out1 = tmp.sum(0, keepdim=True)
            del tmp  # freed in the pool: the next capture may reuse it
        with torch.cuda.graph(g2, pool=pool):
            out2 = x * 3  # same size as tmp: gets its block
        assert g1.pool() == g2.pool() == pool
        assert out2.data_ptr() != out1.data_ptr()
        assert out2._vs.block.pool is out1._vs.block.pool
        reused = vd.allocator.blocks_reused
        assert reused >= 1
        # replayed in capture order on one stream: fine, and right
        g1.replay()
        g2.replay()
        assert out1.tolist() == [12.0] and out2.tolist() == [0.0, 3.0, 6.0, 9.0]
        assert not vd.races
        # replayed on two streams with no edge: g1's temporary is g2's output
        s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
        torch.cuda.synchronize()
        with torch.cuda.stream(s1):
            g1.replay()
        with torch.cuda.stream(s2):
            g2.replay()
        assert len(vd.races) == 1
        text = str(vd.races[0])
        assert "replay of CUDA graph 'g1'" in text and "replay of CUDA graph 'g2'" in text


def test_pool_memory_stays_reserved_while_the_graph_lives():
    with so.virtual_device(seed=0, policy="random"):
        x = torch.ones(256, device="cuda")
        base = torch.cuda.memory_reserved()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = (x * 2) * 3  # one temporary, one output
        assert torch.cuda.memory_reserved() == base + 2 * 1024
        torch.cuda.empty_cache()
        assert torch.cuda.memory_reserved() == base + 2 * 1024  # the pool keeps its blocks
        g.replay()
        assert y.tolist() == [6.0] * 256
        del y
        g.reset()
        assert torch.cuda.memory_reserved() == base


def test_indexed_ops_in_a_graph_resolve_each_replay_from_the_current_index():
    """A KV-cache write at slots the static index buffer names, per replay."""
    with so.virtual_device(seed=1, policy="random") as vd:
        cache = torch.zeros(8, device="cuda")
        loc = torch.zeros(2, dtype=torch.int64, device="cuda")
        val = torch.zeros(2, device="cuda")
        writer = torch.cuda.Stream()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            cache.index_put_((loc,), val)
        torch.cuda.synchronize()
        for step in range(3):
            loc.copy_(torch.tensor([2 * step, 2 * step + 1]).cuda())
            val.fill_(step + 1.0)
            g.replay()
            done = torch.cuda.current_stream().record_event()
            # another stream writes slots the replay does not touch: no race
            writer.wait_event(done) if step == 2 else None
            with torch.cuda.stream(writer):
                cache[7:8].fill_(9.0) if step == 2 else None
        torch.cuda.synchronize()
        assert cache.tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 0.0, 9.0]
        assert not vd.races


def test_random_ops_and_freed_static_inputs_are_named():
    with so.virtual_device(seed=0, policy="random"):
        g = torch.cuda.CUDAGraph()
        with pytest.raises(NotModelledError, match="during a CUDA graph capture"):
            with torch.cuda.graph(g):
                torch.randn(4, device="cuda")
        x = torch.ones(4, device="cuda")
        g2 = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g2):
            y = x + 1
        del x
        with pytest.raises(GraphCaptureError, match="replay of CUDA graph 'g2'.*freed"):
            g2.replay()
        assert y is not None
        with pytest.raises(NotImplementedError, match="torch.cuda.make_graphed_callables"):
            torch.cuda.make_graphed_callables(torch.nn.Identity(), (torch.ones(1),))


PLUGIN_FILE = """
import torch

def _loop(barrier):
    w = torch.ones(4, 4, device="cuda")
    static_in = torch.zeros(4, device="cuda")
    sched, fwd = torch.cuda.Stream(), torch.cuda.Stream()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_out = w @ static_in
    done, ready = torch.cuda.Event(), torch.cuda.Event()
    got = []
    for step in range(3):
        with torch.cuda.stream(sched):
            if barrier and step:
                sched.wait_event(done)
            static_in.fill_(float(step))
            ready.record()
        with torch.cuda.stream(fwd):
            fwd.wait_event(ready)
            g.replay()
            done.record()
            got.append(static_out.sum())  # no host sync: the host runs ahead
    torch.cuda.current_stream().wait_stream(fwd)
    assert [x.item() for x in got] == [0.0, 16.0, 32.0]

def test_correct():
    _loop(True)

def test_broken():
    _loop(False)
"""


def test_plugin_checks_graph_replays(pytester):
    pytester.makepyfile(test_graphs=PLUGIN_FILE)
    result = pytester.runpytest("--streamorder", "--streamorder-schedules=6", "-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*StreamRaceError: stream-order race on 'static_in'*",
        "*replay of CUDA graph 'g', captured at test_graphs.py*",
    ])
