"""The virtual CUDA device API by API: unchanged torch.cuda code inside
`virtual_device()` behaves as on a GPU (real values asserted), and the asynchrony is
real (under `lazy`, queued work has not run until the host waits for it)."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch

import pytest_streamorder as so
from tests import cuda_programs as programs

I64 = torch.int64


@pytest.fixture
def lazy():
    with so.virtual_device(seed=0, policy="lazy", raise_on_race=False) as vd:
        yield vd


@pytest.fixture
def eager():
    with so.virtual_device(seed=0, policy="eager") as vd:
        yield vd


# --- torch.cuda module functions ---------------------------------------------------

def test_device_queries(eager):
    assert torch.cuda.is_available() is True
    assert torch.cuda.device_count() == 1
    assert torch.cuda.current_device() == 0
    torch.cuda.set_device(0)
    torch.cuda.set_device("cuda:0")
    torch.cuda.set_device(torch.device("cuda"))
    assert torch.cuda.current_device() == 0
    name = torch.cuda.get_device_name()
    assert isinstance(name, str) and "Virtual" in name
    assert torch.cuda.get_device_name(0) == name
    assert torch.get_device_module("cuda") is torch.cuda
    assert torch.get_device_module("cuda").Stream is torch.cuda.Stream
    assert torch.get_device_module(torch.device("cuda:0")).Event is torch.cuda.Event


def test_torch_device_objects(eager):
    for dev in ("cuda", "cuda:0", torch.device("cuda"), torch.device("cuda", 0), 0):
        t = torch.ones(2, device=dev)
        assert t.device == torch.device("cuda", 0)
        assert t.is_cuda
        assert t.tolist() == [1.0, 1.0]
    assert torch.device("cuda").type == "cuda"
    assert torch.device("cuda:0").index == 0


def test_stream_priority_and_identity(eager):
    s = torch.cuda.Stream(priority=-1)
    t = torch.cuda.Stream()
    assert s.priority == -1 and t.priority == 0
    handle = s.cuda_stream
    assert isinstance(handle, int) and handle != 0
    assert s.cuda_stream == handle  # stable
    assert t.cuda_stream != handle
    assert torch.cuda.default_stream().cuda_stream == 0  # like CUDA's legacy default stream
    assert s == s and s != t
    assert hash(s) == hash(s)
    assert len({s, t, s}) == 2
    assert {s: 1}[s] == 1
    assert s.device == torch.device("cuda", 0)
    assert isinstance(s, torch.Stream)


def test_current_default_set_stream_and_context(eager):
    default = torch.cuda.default_stream()
    assert torch.cuda.current_stream() == default
    assert torch.cuda.current_stream(0) == default
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        assert torch.cuda.current_stream() == s
        inner = torch.cuda.Stream()
        with torch.cuda.stream(inner):
            assert torch.cuda.current_stream() == inner
        assert torch.cuda.current_stream() == s
    assert torch.cuda.current_stream() == default
    with torch.cuda.stream(None):  # like torch: a no-op
        assert torch.cuda.current_stream() == default
    with s:  # a stream is its own context manager
        assert torch.cuda.current_stream() == s
    assert torch.cuda.current_stream() == default
    torch.cuda.set_stream(s)
    assert torch.cuda.current_stream() == s
    x = torch.zeros(2, device="cuda")  # issued on s
    torch.cuda.set_stream(default)
    assert torch.cuda.current_stream() == default
    s.synchronize()
    assert x.tolist() == [0.0, 0.0]


def test_stream_context_restored_after_exception(eager):
    s = torch.cuda.Stream()
    with pytest.raises(KeyError):
        with torch.cuda.stream(s):
            raise KeyError("boom")
    assert torch.cuda.current_stream() == torch.cuda.default_stream()


def test_synchronize_runs_all_streams(lazy):
    streams = [torch.cuda.Stream() for _ in range(3)]
    pinned = [torch.zeros(2, dtype=I64, pin_memory=True) for _ in streams]
    src = torch.tensor([4, 5], device="cuda")
    torch.cuda.synchronize()
    for s, p in zip(streams, pinned):
        with torch.cuda.stream(s):
            p.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    assert [p.tolist() for p in pinned] == [[4, 5]] * 3
    assert not lazy.races


def test_sleep_advances_virtual_time(eager):
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True, blocking=True)
    start.record()
    torch.cuda._sleep(1_980_000)  # 1 ms at the modelled 1.98 GHz
    end.record()
    end.synchronize()
    assert start.elapsed_time(end) == pytest.approx(1.0, abs=0.01)
    # Ten times the cycles, ten times the time; and on another stream too.
    s = torch.cuda.Stream()
    a = s.record_event(torch.cuda.Event(enable_timing=True))
    with torch.cuda.stream(s):
        torch.cuda._sleep(19_800_000)
    b = s.record_event(torch.cuda.Event(enable_timing=True))
    b.synchronize()
    assert a.elapsed_time(b) == pytest.approx(10.0, abs=0.01)
    assert so_host_blocked(eager) > 0


def so_host_blocked(vd) -> float:
    return vd.host_blocked_s


def test_elapsed_time_needs_timing_and_completion(lazy):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    torch.cuda._sleep(1000)
    b.record()
    with pytest.raises(RuntimeError, match="not completed"):
        a.elapsed_time(b)  # lazy: nothing ran yet
    b.synchronize()
    assert a.elapsed_time(b) > 0
    with pytest.raises(RuntimeError, match="enable_timing"):
        torch.cuda.Event().elapsed_time(torch.cuda.Event())


# --- Stream and Event methods --------------------------------------------------------

_KEEP = []  # sources of queued copies: alive until the device ends (no record_stream needed)


def _queued_d2h(stream, values=(1, 2, 3)):
    """A D2H copy into pinned memory queued on `stream`; the host can see when it ran."""
    src = torch.tensor(list(values), dtype=I64, device="cuda")
    pinned = torch.zeros(len(values), dtype=I64, pin_memory=True)
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        pinned.copy_(src, non_blocking=True)
    _KEEP.append(src)
    return pinned


@pytest.fixture(autouse=True)
def _release_kept():
    yield
    _KEEP.clear()


def _peek(pinned):
    """The pinned buffer's bytes without a (racy) host read reaching the model."""
    with torch._C.DisableTorchFunction():
        return pinned.tolist()


def test_stream_synchronize_and_query(lazy):
    s = torch.cuda.Stream()
    pinned = _queued_d2h(s)
    assert _peek(pinned) == [-1, -1, -1]  # lazy: not run yet (poison until it runs)
    polls = 0
    while not s.query():
        polls += 1
        assert polls < 100
    assert pinned.tolist() == [1, 2, 3]
    assert not lazy.races  # query() returning True is a host sync
    t = torch.cuda.Stream()
    pinned2 = _queued_d2h(t, (7, 8))
    t.synchronize()
    assert pinned2.tolist() == [7, 8]
    assert t.query() is True  # nothing queued
    assert not lazy.races


def test_stream_wait_event_and_wait_stream(lazy):
    a, b, c = torch.cuda.Stream(), torch.cuda.Stream(), torch.cuda.Stream()
    buf = torch.zeros(3, dtype=I64, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(a):
        buf.fill_(5)
    ev = a.record_event()
    assert isinstance(ev, torch.cuda.Event)
    b.wait_event(ev)
    with torch.cuda.stream(b):
        buf.add_(1)
    c.wait_stream(b)
    pinned = torch.zeros(3, dtype=I64, pin_memory=True)
    with torch.cuda.stream(c):
        pinned.copy_(buf, non_blocking=True)
    c.synchronize()  # runs exactly what c needs: b's add, a's fill
    assert pinned.tolist() == [6, 6, 6]
    assert not lazy.races


def test_event_record_wait_query_synchronize(lazy):
    s, t = torch.cuda.Stream(), torch.cuda.Stream()
    buf = torch.zeros(2, dtype=I64, device="cuda")
    torch.cuda.synchronize()
    ev = torch.cuda.Event()
    assert ev.query() is True  # never recorded: complete, like CUDA
    ev.synchronize()  # a no-op
    with torch.cuda.stream(s):
        buf.fill_(3)
    ev.record(s)
    assert ev.query() in (True, False)
    ev.wait(t)
    with torch.cuda.stream(t):
        doubled = buf * 2
    done = torch.cuda.Event()
    done.record(t)
    done.synchronize()
    with torch.cuda.stream(t):
        assert doubled.tolist() == [6, 6]
    # record()/wait() without a stream use the current stream
    with torch.cuda.stream(t):
        ev2 = torch.cuda.Event()
        ev2.record()
    ev2.wait()  # default stream waits on t
    assert (doubled + 1).tolist() == [7, 7]
    assert not lazy.races


def test_rerecording_replaces_the_capture(lazy):
    """A waiter after a re-record waits on the new capture only (DESIGN.md rule)."""
    observed, expected = programs.event_rerecorded_other_stream()
    assert observed != expected
    assert len(lazy.races) == 1 and "re-recorded" in lazy.races[0].explain()


def test_wait_on_never_recorded_event_is_a_noop(lazy):
    observed, expected = programs.wait_before_record()
    assert observed == [0] * 8 and expected != observed
    assert "before the event was ever recorded" in lazy.races[0].explain()


# --- device tensors ------------------------------------------------------------------

def test_factories(eager):
    assert torch.zeros(3, device="cuda").tolist() == [0.0, 0.0, 0.0]
    assert torch.ones(2, 2, dtype=I64, device="cuda").tolist() == [[1, 1], [1, 1]]
    assert torch.full((3,), 7, device="cuda").tolist() == [7, 7, 7]
    assert torch.arange(5, device="cuda").tolist() == [0, 1, 2, 3, 4]
    assert torch.arange(1, 7, 2, device="cuda").tolist() == [1, 3, 5]
    assert sorted(torch.randperm(6, device="cuda").tolist()) == list(range(6))
    r = torch.randint(0, 3, (50,), device="cuda")
    assert r.dtype == I64 and set(r.tolist()) <= {0, 1, 2}
    assert torch.tensor([1.5, 2.5], device="cuda").tolist() == [1.5, 2.5]
    assert torch.tensor(3, device="cuda").item() == 3
    e = torch.empty(4, device="cuda")
    assert e.shape == (4,) and e.device.type == "cuda"
    x = torch.arange(4, device="cuda")
    for like, want in ((torch.zeros_like, [0] * 4), (torch.ones_like, [1] * 4),
                       (lambda t: torch.full_like(t, 9), [9] * 4)):
        y = like(x)
        assert y.device == torch.device("cuda", 0) and y.dtype == I64
        assert y.tolist() == want
    assert torch.empty_like(x).shape == x.shape
    for t in (x, torch.zeros(1, device="cuda"), torch.empty(2, 2, device="cuda")):
        assert t.device == torch.device("cuda", 0) and t.is_cuda


def test_randomness_follows_the_cpu_generator(eager):
    torch.manual_seed(123)
    a = torch.randint(0, 1000, (8,), device="cuda").tolist()
    torch.manual_seed(123)
    b = torch.randint(0, 1000, (8,), device="cuda").tolist()
    assert a == b


def test_uploads(eager):
    host = torch.tensor([1, 2, 3])
    for up in (host.cuda(), host.cuda(0), host.to("cuda"), host.to("cuda:0"),
               host.to(torch.device("cuda")), host.to(0),
               host.to("cuda", non_blocking=True), host.to(torch.device("cuda", 0), torch.float32)):
        assert up.device == torch.device("cuda", 0) and up.is_cuda
        assert up.tolist() == [1, 2, 3]
    assert host.to("cuda", dtype=torch.float64).dtype == torch.float64
    d = host.cuda()
    assert d.to("cuda") is d and d.cuda() is d
    assert d.to("cpu").device.type == "cpu" and d.to("cpu").tolist() == [1, 2, 3]
    assert not host.is_cuda


def test_ordinary_ops_views_and_inplace(eager):
    x = torch.arange(12, dtype=I64, device="cuda")
    m = x.view(3, 4)
    assert m.shape == (3, 4) and m.is_cuda
    assert (m * 2 + 1)[1].tolist() == [9, 11, 13, 15]
    assert m.sum(dim=0).tolist() == [12, 15, 18, 21]
    assert m.t().contiguous().tolist() == [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]]
    assert torch.cat([x[:2], x[-2:]]).tolist() == [0, 1, 10, 11]
    assert (m @ torch.ones(4, 1, dtype=I64, device="cuda")).flatten().tolist() == [6, 22, 38]
    assert torch.where(x > 9, x, -x)[8:].tolist() == [-8, -9, 10, 11]
    row = m[1]  # a view: writes through it land in x
    row.mul_(10)
    assert x[4:8].tolist() == [40, 50, 60, 70]
    m[:, 0] = -1
    assert x[::4].tolist() == [-1, -1, -1]
    x.add_(1).clamp_(max=20)
    assert x.tolist() == [0, 2, 3, 4, 0, 20, 20, 20, 0, 10, 11, 12]
    assert x.float().mean().item() == pytest.approx(102 / 12)


def test_indexing_and_index_put(eager):
    buf = torch.zeros(8, dtype=I64, device="cuda")
    idx = torch.tensor([1, 3, 5], device="cuda")
    buf[idx] = torch.tensor([11, 33, 55], device="cuda")
    assert buf.tolist() == [0, 11, 0, 33, 0, 55, 0, 0]
    buf.index_put_((torch.tensor([0], device="cuda"),), torch.tensor([9], device="cuda"))
    buf.index_put_((idx,), torch.ones(3, dtype=I64, device="cuda"), accumulate=True)
    assert buf.tolist() == [9, 12, 0, 34, 0, 56, 0, 0]
    assert buf[idx].tolist() == [12, 34, 56]
    assert buf[torch.tensor([7, 0])].tolist() == [0, 9]  # host indices are uploaded
    assert buf[2:4].tolist() == [0, 34]
    assert buf[-1].item() == 0
    buf[buf == 0] = -1
    assert buf.tolist() == [9, 12, -1, 34, -1, 56, -1, -1]


def test_record_stream_accepts_virtual_streams(eager):
    s = torch.cuda.Stream()
    x = torch.ones(2, device="cuda")
    x.record_stream(s)
    x.record_stream(torch.cuda.current_stream())
    with pytest.raises((TypeError, RuntimeError)):
        torch.ones(2).record_stream(s)  # a host tensor has no stream


# --- pinned memory and copies ------------------------------------------------------

def test_pinned_memory(eager):
    host = torch.tensor([1, 2])
    assert not host.is_pinned()
    p = host.pin_memory()
    assert p.is_pinned() and p.tolist() == [1, 2] and p.device.type == "cpu"
    assert torch.empty(3, pin_memory=True).is_pinned()
    assert torch.zeros(3, dtype=I64, pin_memory=True).is_pinned()
    assert not torch.zeros(3).is_pinned()


def test_d2h_non_blocking_lands_only_when_the_copy_runs(lazy):
    src = torch.arange(1, 5, dtype=I64, device="cuda")
    pinned = torch.zeros(4, dtype=I64, pin_memory=True)
    torch.cuda.synchronize()
    pinned.copy_(src, non_blocking=True)
    assert _peek(pinned) == [-1] * 4  # returned at once; not run under lazy: poison
    torch.cuda.current_stream().synchronize()
    assert pinned.tolist() == [1, 2, 3, 4]
    assert not lazy.races
    # .to("cpu", non_blocking=True) lands in pinned memory the same way
    out = src.to("cpu", non_blocking=True)
    assert out.is_pinned()
    assert _peek(out) != [1, 2, 3, 4]
    torch.cuda.synchronize()
    assert out.tolist() == [1, 2, 3, 4]
    assert not lazy.races


def test_host_read_before_the_sync_is_stale_and_reported(lazy):
    src = torch.arange(1, 5, dtype=I64, device="cuda")
    pinned = torch.zeros(4, dtype=I64, pin_memory=True)
    torch.cuda.synchronize()
    pinned.copy_(src, non_blocking=True)
    assert pinned.tolist() == [-1, -1, -1, -1]  # stale: poison until the copy runs
    assert len(lazy.races) == 1 and lazy.races[0].later.agent.is_host


def test_blocking_d2h_into_pageable_memory_waits(lazy):
    src = torch.arange(3, dtype=I64, device="cuda")
    host = torch.zeros(3, dtype=I64)
    host.copy_(src, non_blocking=True)  # pageable: synchronous anyway
    assert host.tolist() == [0, 1, 2]
    host2 = torch.zeros(3, dtype=I64)
    host2.copy_(src)
    assert host2.tolist() == [0, 1, 2]
    assert not lazy.races


def test_h2d_from_pinned_reads_the_host_buffer_when_it_runs(lazy):
    staging = torch.tensor([1, 2, 3]).pin_memory()
    dst = staging.to("cuda", non_blocking=True)
    staging.fill_(9)  # the copy has not run: the host overwrites its source
    torch.cuda.synchronize()
    assert dst.tolist() == [9, 9, 9]
    assert len(lazy.races) == 1 and "overwrote" in lazy.races[0].explain()


def test_h2d_from_pageable_takes_the_value_now(lazy):
    host = torch.tensor([1, 2, 3])
    dst = host.to("cuda", non_blocking=True)
    host.fill_(9)
    torch.cuda.synchronize()
    assert dst.tolist() == [1, 2, 3]
    assert not lazy.races


# --- host syncs sync the current stream only ------------------------------------------

SYNCS = {
    "cpu": lambda x: x.cpu(),
    "to_cpu": lambda x: x.to("cpu"),
    "item": lambda x: x.sum().item(),
    "tolist": lambda x: x.tolist(),
    "int": lambda x: int(x[0]),
    "float": lambda x: float(x[0]),
    "bool": lambda x: bool(x[0]),
    "print": lambda x: print(x),
    "str": lambda x: str(x),
    "nonzero": lambda x: x.nonzero(),
    "mask": lambda x: x[x > 0],
    "equal": lambda x: torch.equal(x, x),
}


@pytest.mark.parametrize("how", list(SYNCS))
def test_host_syncs_wait_for_the_current_stream_only(lazy, how, capsys):
    other = torch.cuda.Stream()
    x = torch.tensor([4, 5], device="cuda")  # the current stream
    pinned = _queued_d2h(other)  # queued on another stream
    x.add_(1)  # queued on the current stream
    pending = torch.zeros(2, dtype=I64, pin_memory=True)
    pending.copy_(x, non_blocking=True)
    SYNCS[how](x)  # syncs the current (default) stream
    assert _peek(pending) == [5, 6]  # the current stream's work ran
    assert _peek(pinned) == [-1, -1, -1]  # the other stream's did not: poison
    other.synchronize()
    assert pinned.tolist() == [1, 2, 3]
    assert not lazy.races


def test_syncs_inside_a_stream_context_sync_that_stream(lazy):
    s = torch.cuda.Stream()
    pinned = _queued_d2h(torch.cuda.default_stream())
    with torch.cuda.stream(s):
        y = torch.arange(3, device="cuda") * 2
        assert y.tolist() == [0, 2, 4]
        assert y.sum().item() == 6
        assert y.nonzero().flatten().tolist() == [1, 2]
    assert _peek(pinned) == [-1, -1, -1]  # the default stream's copy has not run: poison


def test_printing_a_device_tensor(eager, capsys):
    x = torch.tensor([1, 2], device="cuda")
    print(x)
    assert capsys.readouterr().out.strip() == "tensor([1, 2], device='cuda:0')"
    assert repr(x) == "tensor([1, 2], device='cuda:0')"
    assert f"{x[0]}" == "1"


def test_data_dependent_ops(eager):
    x = torch.tensor([0, 3, 0, 4], device="cuda")
    assert x.nonzero().flatten().tolist() == [1, 3]
    assert x[x > 0].tolist() == [3, 4]
    assert torch.masked_select(x, x > 3).tolist() == [4]
    assert torch.unique(x).tolist() == [0, 3, 4]
    assert x.nonzero().is_cuda


# --- memory --------------------------------------------------------------------------

def test_new_allocations_hold_poison(lazy):
    assert torch.empty(3, dtype=I64, device="cuda").tolist() == [-1, -1, -1]
    f = torch.empty(3, device="cuda").tolist()
    assert all(math.isnan(v) for v in f)
    x = torch.ones(4, dtype=I64, device="cuda")
    assert torch.empty_like(x).tolist() == [-1] * 4
    assert x.new_empty(2).tolist() == [-1, -1]
    assert torch.empty(2, 2, dtype=torch.int32, device="cuda").tolist() == [[-1, -1], [-1, -1]]


def _reuse_program(use_record_stream: bool):
    side = torch.cuda.Stream()
    tmp = torch.tensor([1, 2, 3, 4], dtype=I64, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = tmp * 10
    if use_record_stream:
        tmp.record_stream(side)
    old_ptr = tmp.data_ptr()
    del tmp
    scratch = torch.empty(4, dtype=I64, device="cuda")
    reused = scratch.data_ptr() == old_ptr
    scratch.fill_(-5)
    torch.cuda.current_stream().synchronize()
    side.synchronize()
    return out.tolist(), reused


def test_allocator_reuse_without_record_stream_corrupts_and_is_reported(lazy):
    values, reused = _reuse_program(use_record_stream=False)
    assert reused  # handed to the next allocation on the stream at once
    assert values == [-50] * 4  # side read the new owner's data
    assert len(lazy.races) == 1
    assert "record_stream" in lazy.races[0].explain()


def test_allocator_reuse_with_record_stream_is_safe(lazy):
    values, reused = _reuse_program(use_record_stream=True)
    assert not reused
    assert values == [10, 20, 30, 40]
    assert not lazy.races


def test_block_is_reused_once_the_recorded_stream_is_done(lazy):
    side = torch.cuda.Stream()
    tmp = torch.ones(4, dtype=I64, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = tmp + 1
    tmp.record_stream(side)
    ptr = tmp.data_ptr()
    del tmp
    side.synchronize()
    again = torch.empty(4, dtype=I64, device="cuda")
    assert again.data_ptr() == ptr
    assert out.tolist() == [2] * 4
    assert not lazy.races


def test_zero_size_tensors_touch_nothing(lazy):
    s = torch.cuda.Stream()
    buf = torch.zeros(4, dtype=I64, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(s):
        buf[2:2].fill_(7)  # empty view: no access
    buf.fill_(1)  # default stream, unordered with s: still no race
    torch.cuda.synchronize()
    assert buf.tolist() == [1] * 4
    assert not lazy.races


# --- unsupported things fail loudly, by name ------------------------------------------

def test_cuda_graphs_are_unsupported(eager):
    # CUDAGraph and torch.cuda.graph are modelled now (test_cuda_graphs.py); graphed
    # callables (autograd captured into graphs) are not
    with pytest.raises(NotImplementedError, match="torch.cuda.make_graphed_callables"):
        torch.cuda.make_graphed_callables(torch.nn.Identity(), (torch.ones(1),))
    # memory_allocated is modelled now (test_cuda_api_surface.py); the snapshot is not
    with pytest.raises(NotImplementedError, match="memory_snapshot"):
        torch.cuda.memory_snapshot()


def test_op_without_meta_kernel_is_unsupported(eager):
    x = torch.arange(4.0, device="cuda")
    with pytest.raises(NotImplementedError, match=r"aten\.histogram"):
        torch.histogram(x, bins=2)


def test_untyped_storage_is_read_only(eager):
    # untyped_storage() of a device tensor is modelled now (read-only); changing it is not
    x = torch.zeros(2, device="cuda")
    storage = x.untyped_storage()
    assert (storage.nbytes(), storage.device.type, storage.data_ptr()) == (8, "cuda", x.data_ptr())
    with pytest.raises(NotImplementedError, match="UntypedStorage.resize_"):
        storage.resize_(0)
    assert torch.zeros(2).untyped_storage().nbytes() == 8  # host tensors are unaffected


def test_interprocess_events_are_unsupported(eager):
    with pytest.raises(NotImplementedError, match="interprocess"):
        torch.cuda.Event(interprocess=True)


# --- the context -----------------------------------------------------------------------

def _cuda_attrs() -> dict:
    import torch._dynamo  # noqa: F401  (the device imports it; it adds to torch.cuda)

    return dict(vars(torch.cuda))


def test_leaving_restores_torch_cuda_exactly():
    before = _cuda_attrs()
    with so.virtual_device():
        assert torch.cuda.Stream is not before["Stream"]
        assert torch.cuda.is_available()
        torch.zeros(2, device="cuda").tolist()
    after = dict(vars(torch.cuda))
    assert after.keys() == before.keys()
    assert [k for k in before if after[k] is not before[k]] == []
    assert torch.cuda.Stream is before["Stream"]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt, so.StreamRaceError])
def test_leaving_after_an_exception_restores_torch_cuda(error):
    before = _cuda_attrs()
    with pytest.raises(error):
        with so.virtual_device(policy="lazy"):
            torch.ones(2, device="cuda")
            if error is so.StreamRaceError:
                programs.d2h_not_gated()
            raise error("boom")
    after = dict(vars(torch.cuda))
    assert after.keys() == before.keys()
    assert [k for k in before if after[k] is not before[k]] == []
    with so.virtual_device():  # usable again
        assert torch.ones(1, device="cuda").tolist() == [1.0]


def test_modes_are_gone_after_leaving():
    with so.virtual_device():
        x = torch.ones(2, device="cuda")
    assert torch.zeros(2).device.type == "cpu"
    assert (torch.ones(2) + 1).tolist() == [2.0, 2.0]
    with pytest.raises(RuntimeError, match="virtual"):
        x + 1  # a virtual tensor outside its device


def test_nesting_is_refused():
    with so.virtual_device() as vd:
        with pytest.raises(RuntimeError, match="nesting is not supported"):
            with so.virtual_device():
                pass
        assert torch.ones(2, device="cuda").tolist() == [1.0, 1.0]  # outer still works
        assert torch.cuda.Stream is not None
    assert not vd.active


def test_a_device_runs_once():
    vd = so.virtual_device()
    with vd:
        pass
    with pytest.raises(RuntimeError, match="runs once"):
        with vd:
            pass


# --- determinism and replay -------------------------------------------------------------

def _run(fn, **kw):
    with so.virtual_device(raise_on_race=False, **kw) as vd:
        observed, _ = fn()
    return vd, observed


@pytest.mark.parametrize("policy", so.POLICIES)
def test_same_seed_same_schedule_and_values(policy):
    for fn in (programs.missing_war_barrier, programs.stale_event_spec_off, programs.query_polling):
        runs = [_run(fn, seed=7, policy=policy) for _ in range(2)]
        (vd1, obs1), (vd2, obs2) = runs
        assert vd1.schedule == vd2.schedule
        assert obs1 == obs2
        assert [r.key() for r in vd1.races] == [r.key() for r in vd2.races]


def test_seeds_explore_different_schedules():
    seen = {tuple(_run(programs.missing_war_barrier, seed=s, policy="random")[1]) for s in range(20)}
    assert len(seen) >= 2
    schedules = {_run(programs.d2h_not_gated, seed=s, policy="random")[0].schedule for s in range(5)}
    assert len(schedules) >= 2


@pytest.mark.parametrize("policy", so.POLICIES)
def test_replay_reproduces_exactly(policy):
    for seed in range(5):
        vd, observed = _run(programs.stale_event_spec_off, seed=seed, policy=policy)
        vd2, observed2 = _run(programs.stale_event_spec_off, replay=vd.schedule)
        assert vd2.schedule == vd.schedule
        assert (vd2.policy, vd2.seed) == (policy, seed)
        assert observed2 == observed
        assert [(r.key(), r.explain()) for r in vd2.races] == \
            [(r.key(), r.explain()) for r in vd.races]


def test_schedule_is_a_value():
    vd, _ = _run(programs.d2h_not_gated, seed=3, policy="random")
    s = vd.schedule
    assert isinstance(s, so.Schedule)
    assert s.policy == "random" and s.seed == 3
    assert all(isinstance(c, int) for c in s.choices)
    assert so.Schedule(s.policy, s.seed, tuple(s.choices)) == s


@pytest.mark.parametrize("policy", so.POLICIES)
def test_query_polling_terminates(policy):
    for seed in range(5):
        with so.virtual_device(seed=seed, policy=policy) as vd:
            s = torch.cuda.Stream()
            x = torch.zeros(4, device="cuda")
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(20):
                    x.add_(1)
            ev = torch.cuda.Event()
            ev.record(s)
            polls = 0
            while not ev.query():
                polls += 1
                assert polls < 1000
            while not s.query():
                polls += 1
                assert polls < 1000
            with torch.cuda.stream(s):
                assert x.tolist() == [20.0] * 4
        assert not vd.races


# --- bad arguments -------------------------------------------------------------------------

def test_bad_policy():
    with pytest.raises(ValueError, match="unknown scheduling policy 'fifo'") as info:
        so.virtual_device(policy="fifo")
    for p in so.POLICIES:
        assert p in str(info.value)
    assert set(so.POLICIES) == {"eager", "lazy", "random", "pct", "delay"}


def test_bad_replay():
    with pytest.raises(TypeError, match="Schedule"):
        so.virtual_device(replay=(1, 2, 3))


def test_bad_device_index(eager):
    with pytest.raises(ValueError, match="one GPU"):
        torch.cuda.set_device(1)
    with pytest.raises(ValueError, match="one GPU"):
        torch.cuda.get_device_name(1)
    with pytest.raises(ValueError, match="cuda:0"):
        torch.cuda.Stream(device="cuda:1")
    with pytest.raises(ValueError, match="one GPU"):
        torch.zeros(2, device="cuda:1")


def test_bad_stream_arguments(eager):
    with pytest.raises(TypeError, match="torch.cuda.Stream"):
        torch.cuda.set_stream("default")
    with pytest.raises(TypeError):
        torch.cuda.current_stream().wait_event("event")
    with pytest.raises(TypeError):
        torch.cuda.current_stream().wait_stream(3)


def test_streams_need_an_active_device():
    with pytest.raises(RuntimeError):
        from pytest_streamorder.sim.streams import VirtualStream

        VirtualStream()


# --- known sim bugs: tests that demonstrate them ------------------------------------------

def test_inplace_view_ops_update_the_layout(eager):
    x = torch.arange(6, device="cuda").view(2, 3)
    x.t_()
    assert x.shape == (3, 2)
    assert x.tolist() == [[0, 3], [1, 4], [2, 5]]


def test_as_strided_inplace_values(eager):
    z = torch.arange(8, device="cuda")
    z.as_strided_((2,), (1,), 4)
    assert z.tolist() == [4, 5]


def test_as_strided_inplace_narrows_the_race_range(lazy):
    """After as_strided_ the tensor touches only its new bytes: a write to the rest of the
    buffer on another stream is no race, a write to its bytes is."""
    buf = torch.zeros(8, dtype=I64, device="cuda")
    head, tail = buf[:4], buf.view(-1)
    tail.as_strided_((4,), (1,), 4)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        tail.fill_(1)
    head.fill_(2)  # default stream, bytes [0, 32): disjoint from tail's [32, 64)
    assert not lazy.races
    buf[4:].fill_(3)  # default stream, the bytes side wrote without a wait
    assert len(lazy.races) == 1


def test_empty_index_put_writes_nothing(lazy):
    """index_put_ with zero indices writes nothing (on a GPU too): its access resolves to
    the empty set when it runs, so the unfenced DP-idle publish is no race."""
    buf = torch.zeros(8, dtype=I64, device="cuda")
    pinned = torch.zeros(8, dtype=I64, pin_memory=True)
    empty = torch.empty(0, dtype=I64, device="cuda")
    torch.cuda.synchronize()
    forward = torch.cuda.Stream()
    d2h = torch.cuda.Stream()
    ready = torch.cuda.Event()
    with torch.cuda.stream(forward):
        buf[torch.tensor([1], device="cuda")] = torch.tensor([5], device="cuda")
        ready.record()
        buf[empty] = empty  # a DP-idle publish without the early return
    d2h.wait_event(ready)
    with torch.cuda.stream(d2h):
        pinned.copy_(buf, non_blocking=True)
    d2h.synchronize()
    assert pinned.tolist() == [0, 5, 0, 0, 0, 0, 0, 0]
    assert not lazy.races


# --- out= tensors: written in place, or a named refusal where CUDA would resize ---------

OUT_CALLS = {
    "add": (lambda x, out: torch.add(x, 1, out=out), (8,)),
    "cat": (lambda x, out: torch.cat([x, x], out=out), (16,)),
    "cumsum": (lambda x, out: torch.cumsum(x, 0, out=out), (8,)),
    "index_select": (lambda x, out: torch.index_select(x, 0, x[:3], out=out), (3,)),
    "mm": (lambda x, out: torch.mm(x.view(2, 4), x.view(4, 2), out=out), (2, 2)),
}


@pytest.mark.parametrize("name", sorted(OUT_CALLS))
@pytest.mark.parametrize("given", ["result's shape", "zero-size"])
def test_an_out_tensor_of_the_results_shape_or_empty_is_written_in_place(lazy, name, given):
    """An empty out= is resized to the result, as CUDA does (fresh memory from the
    current stream's pool), so C++ composites that fill `at::empty({0})` work too."""
    call, shape = OUT_CALLS[name]
    expected = call(torch.arange(8), torch.empty(shape, dtype=torch.int64))
    x = torch.arange(8, device="cuda")
    out = torch.empty(shape if given == "result's shape" else (0,), dtype=torch.int64,
                      device="cuda")
    assert call(x, out) is out
    assert tuple(out.shape) == shape and out.cpu().tolist() == expected.tolist()
    assert out.untyped_storage().nbytes() == expected.numel() * 8


def test_a_resized_empty_out_is_device_memory_the_model_tracks(lazy):
    x = torch.arange(8, device="cuda")
    out = torch.empty(0, dtype=torch.int64, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.add(x, 1, out=out)  # written on the side stream...
    out.sum()  # ...read on the default stream with no wait
    (race,) = lazy.races
    assert (race.earlier.agent.name, race.earlier.is_write) == ("side", True)
    assert race.alloc is out._vs.alloc


@pytest.mark.parametrize("name, call", [
    ("one_hot", lambda d: torch.nn.functional.one_hot(torch.tensor([0, 2, 1], device=d), 4)),
    ("embedding_bag", lambda d: torch.nn.functional.embedding_bag(
        torch.tensor([0, 1, 2, 1], device=d), torch.arange(6.0, device=d).view(3, 2),
        torch.tensor([0, 2], device=d), mode="max")),
])
def test_composites_filling_an_empty_tensor_run_on_the_device(lazy, name, call):
    assert call("cuda").cpu().tolist() == call("cpu").tolist()


@pytest.mark.parametrize("name", sorted(OUT_CALLS))
@pytest.mark.parametrize("wrong", [(2,), (40,)])
def test_an_out_tensor_cuda_would_resize_is_refused_by_name(lazy, name, wrong):
    """CUDA resizes it to the result's shape; the model does not, and writing into the
    old shape would hand back cut or poison-padded values."""
    call, shape = OUT_CALLS[name]
    x = torch.arange(8, device="cuda")
    out = torch.empty(wrong, dtype=torch.int64, device="cuda")
    with warnings.catch_warnings():  # torch's deprecation of resizing a non-empty out=
        warnings.simplefilter("ignore")
        with pytest.raises(so.NotModelledError,
                           match=rf"resizing its out= tensor from {re.escape(str(wrong))} "
                                 rf"to {re.escape(str(shape))}"):
            call(x, out)
    assert tuple(out.shape) == wrong  # left as it was
    assert torch.arange(3, device="cuda").add(1).cpu().tolist() == [1, 2, 3]  # goes on
