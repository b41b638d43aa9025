"""CUDA graphs under the real-GPU backend: capture runs for real and feeds nothing to the
detector as work; each replay is fed as the captured ops issued again on the replay
stream. The same programs as tests/unit/test_cuda_graphs.py. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from pytest_streamorder.errors import StreamRaceError

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real CUDA device"),
]


def _backend(**kw):
    from pytest_streamorder.gpu import cuda_backend
    return cuda_backend(**kw)


def _decode_loop(steps: int, war_barrier: bool):
    w = (torch.arange(12.0).reshape(4, 3) / 10).cuda()
    static_in = torch.zeros(2, 4, device="cuda")
    sched, fwd = torch.cuda.Stream(), torch.cuda.Stream()
    fwd.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(fwd):  # warm up on a side stream
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
                sched.wait_event(done)
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
    w = torch.arange(12.0).reshape(4, 3) / 10
    return [((torch.full((2, 4), float(s)) - 1) @ w).relu_() + 1 for s in range(steps)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_loop_with_war_barrier_is_silent_and_right(seed):
    with _backend(seed=seed, raise_on_race=False, delay_probability=1.0,
                  fire_probability=1.0, delay_ms=0.3) as be:
        outs = _decode_loop(4, war_barrier=True)
    assert not be.races, "\n\n".join(str(r) for r in be.races)
    for got, want in zip(outs, _expected(4)):
        torch.testing.assert_close(got, want)


def test_missing_war_barrier_is_a_race_naming_the_replay():
    with _backend(seed=0, raise_on_race=False, delay_probability=0) as be:
        _decode_loop(3, war_barrier=False)
    assert be.races
    text = str(be.races[0])
    assert "static_in" in text and "replay of CUDA graph 'g'" in text, text


def test_capture_is_not_work_and_replays_on_the_replay_stream():
    with _backend(seed=0, raise_on_race=False, delay_probability=0) as be:
        x = torch.ones(4, device="cuda")
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            assert torch.cuda.is_current_stream_capturing()
            y = x * 3
        assert not torch.cuda.is_current_stream_capturing()
        x.fill_(2)  # the captured read of x never ran: nothing to race with
        g.replay()  # on the default stream, after the fill: ordered
        assert y.tolist() == [6.0] * 4
        assert not be.races, "\n\n".join(str(r) for r in be.races)
        x.fill_(4)
        other = torch.cuda.Stream()
        with torch.cuda.stream(other):
            g.replay()  # reads x on `other`, unordered with the default stream's fill
        torch.cuda.synchronize()
    assert len(be.races) == 1
    text = str(be.races[0])
    assert "replay of CUDA graph 'g'" in text and "'other'" in text, text


def test_fork_join_inside_capture_and_shared_pool():
    with _backend(seed=0, raise_on_race=False, delay_probability=0) as be:
        a = torch.arange(4.0, device="cuda")
        side = torch.cuda.Stream()
        pool = torch.cuda.graph_pool_handle()
        g1, g2 = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(g1, pool=pool):
            main = torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                b = a * 10
            c = a + 1
            main.wait_stream(side)
            out1 = b + c
        with torch.cuda.graph(g2, pool=pool):
            out2 = a * 3
        for k in range(3):
            a.fill_(float(k))
            g1.replay()
            g2.replay()
            torch.cuda.synchronize()
            assert out1.tolist() == [k * 10 + k + 1.0] * 4
            assert out2.tolist() == [3.0 * k] * 4
    assert not be.races, "\n\n".join(str(r) for r in be.races)
