"""The function mode is off while nothing needs it (issue 15, host-heavy tests): device
tensors are handled by their own __torch_function__, factories and .cuda()/.to() by the
patched entry points; the mode is pushed only while pinned memory exists (or the owner
started threads), and races stay caught."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import pytest_streamorder as so
from pytest_streamorder.errors import StreamRaceError


def stack_len() -> int:
    return torch._C._len_torch_function_stack()


def test_host_calls_run_with_an_empty_mode_stack():
    before = stack_len()
    with so.virtual_device(policy="delay") as vd:
        assert stack_len() == before
        a = torch.arange(12.0).reshape(3, 4)
        b = torch.zeros(3, 4, dtype=torch.float32, device="cpu") + a * 2
        assert b.sum().item() == 132.0
        assert b.to(torch.float64).dtype == torch.float64
        assert stack_len() == before
    assert vd.ops_issued == 0
    assert stack_len() == before


def test_device_work_with_the_mode_off():
    with so.virtual_device(policy="delay") as vd:
        z = torch.zeros(3, device="cuda")
        t = torch.tensor([1, 2, 3], device="cuda")
        r = torch.arange(4, device="cuda")
        e = torch.eye(2, device="cuda")
        up = torch.ones(2).cuda()
        up2 = torch.ones(2).to("cuda")
        lin = torch.nn.Linear(2, 3, device="cuda")
        assert stack_len() == 0
        assert type(z).__name__ == "DeviceTensor" and z.device.type == "cuda"
        assert t.tolist() == [1, 2, 3]
        assert r.tolist() == [0, 1, 2, 3]
        assert e.cpu().tolist() == [[1.0, 0.0], [0.0, 1.0]]
        assert (up + up2).tolist() == [2.0, 2.0]
        assert lin.weight.device.type == "cuda"
        x = torch.arange(6.0, device="cuda")
        assert x[2:4].tolist() == [2.0, 3.0]
        x[0] = 7.0
        assert x[0].item() == 7.0
        assert type(x + 1).__name__ == "DeviceTensor"
        assert type(x.cpu()) is torch.Tensor
        with pytest.raises(ValueError, match="one GPU"):
            torch.ones(2).cuda(1)
        assert stack_len() == 0
    assert vd.ops_issued > 5


def test_race_between_streams_with_the_mode_off():
    with pytest.raises(StreamRaceError):
        with so.virtual_device(policy="delay"):
            x = torch.zeros(1000, device="cuda")
            s = torch.cuda.Stream()
            assert stack_len() == 0
            with torch.cuda.stream(s):
                x.add_(1)  # no wait for the default stream's fill
            torch.cuda.synchronize()


def test_a_copy_in_flight_into_pinned_memory_pushes_the_mode_and_the_race_is_caught():
    with so.virtual_device(policy="delay"):
        x = torch.arange(4.0, device="cuda")
        torch.cuda.synchronize()
        p = torch.empty(4).pin_memory()
        assert p.is_pinned()
        assert stack_len() == 0  # pinned, but no stream touches it: host calls race with nothing
        p.add_(1)
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            p.copy_(x, non_blocking=True)
        assert stack_len() == 1  # in flight: host calls on pinned memory are accesses
        with pytest.raises(StreamRaceError, match="read by the host"):
            p.sum()


def test_the_mode_goes_at_the_sync_that_orders_the_host_after_the_copy():
    with so.virtual_device(policy="delay") as vd:
        x = torch.arange(4.0, device="cuda")
        p = torch.empty(4).pin_memory()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            p.copy_(x, non_blocking=True)
        done = s.record_event()
        assert stack_len() == 1
        torch.cuda.current_stream().synchronize()  # not the copy's stream: still in flight
        assert stack_len() == 1
        done.synchronize()
        assert stack_len() == 0
        assert p.tolist() == [0.0, 1.0, 2.0, 3.0]  # after the sync: no access to watch
        with torch.cuda.stream(s):
            p.copy_(x * 2, non_blocking=True)
        assert stack_len() == 1
        torch.cuda.synchronize()
        assert stack_len() == 0 and p.tolist() == [0.0, 2.0, 4.0, 6.0]
    assert vd.races == []


def test_pin_memory_keyword_with_the_mode_off():
    with so.virtual_device(policy="delay"):
        assert stack_len() == 0
        p = torch.zeros(4, pin_memory=True)
        assert p.is_pinned() and stack_len() == 0  # pushed once a stream touches it


def test_pinned_host_read_race_in_a_worker_thread():
    errors = []

    def worker(x):
        p = torch.empty(4).pin_memory()
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            p.copy_(x, non_blocking=True)
        try:
            p.sum()
        except StreamRaceError as e:
            errors.append(e)

    with so.virtual_device(policy="delay"):
        x = torch.arange(4.0, device="cuda")
        torch.cuda.synchronize()
        th = threading.Thread(target=worker, args=(x,))
        th.start()
        th.join()
    assert len(errors) == 1


def test_owner_reads_memory_a_pool_worker_pinned():
    """The owner's mode goes on when it submits work: the worker pins, the owner reads."""
    with so.virtual_device(policy="delay"):
        x = torch.arange(4.0, device="cuda")
        torch.cuda.synchronize()
        assert stack_len() == 0

        def pin_and_copy():
            p = torch.empty(4).pin_memory()
            s = torch.cuda.Stream()
            with torch.cuda.stream(s):
                p.copy_(x, non_blocking=True)
            return p

        with ThreadPoolExecutor(1) as pool:
            p = pool.submit(pin_and_copy).result()
        with pytest.raises(StreamRaceError, match="read by the host"):
            p.sum()


def test_entry_points_restored_after_the_device():
    names = ("zeros", "tensor", "arange")
    before = {n: getattr(torch, n) for n in names}
    methods = {n: torch.Tensor.__dict__.get(n) for n in ("cuda", "to", "pin_memory")}
    with so.virtual_device():
        assert torch.zeros is not before["zeros"]
    assert {n: getattr(torch, n) for n in names} == before
    assert {n: torch.Tensor.__dict__.get(n) for n in methods} == methods


def test_torchscript_still_compiles_patched_factories():
    with so.virtual_device():
        @torch.jit.script
        def f(n: int):
            return torch.zeros(n) + torch.arange(n)
        assert f(3).tolist() == [0.0, 1.0, 2.0]


def test_default_device_contexts_make_device_memory():
    """`with torch.device("cuda"):` and set_default_device("cuda") (model construction in
    vLLM/SGLang style): factories without device= land on the virtual device, explicit
    device="cpu" stays on the host, and the context still works after the device ends."""
    with so.virtual_device(policy="delay") as vd:
        with torch.device("cuda"):
            r = torch.arange(4)
            lin = torch.nn.Linear(2, 3)
            host = torch.zeros(2, device="cpu")
            t = torch.tensor([5, 6])
            y = lin(torch.ones(2))
        assert (type(r).__name__, r.device.type, r.cpu().tolist()) == ("DeviceTensor", "cuda", [0, 1, 2, 3])
        assert lin.weight.device.type == "cuda" and y.device.type == "cuda" and tuple(y.shape) == (3,)
        assert host.device.type == "cpu" and t.cpu().tolist() == [5, 6]
        torch.set_default_device("cuda")
        try:
            assert torch.ones(3).device.type == "cuda"
        finally:
            torch.set_default_device(None)
        assert torch.ones(3).device.type == "cpu"
        assert torch._C._len_torch_function_stack() == 0
        with torch.device("cpu"):  # a DeviceContext of the host; .to(copy=) as meta kernels call it
            assert torch.ones(2).to(torch.float64, copy=True).dtype == torch.float64
            assert torch.ones(2, device="meta").to(torch.float16, copy=False).device.type == "meta"
    assert vd.ops_issued > 0
    with torch.device("meta"):  # torch's cache of factories still holds its own functions
        assert torch.arange(2).device.type == "meta"


def test_default_device_context_with_the_mode_pushed():
    """A copy in flight into pinned memory pushes our function mode; torch's DeviceContext
    then sits below it."""
    with so.virtual_device(policy="delay"):
        pinned = torch.zeros(4).pin_memory()
        pinned.copy_(torch.ones(4, device="cuda"), non_blocking=True)
        assert torch._C._len_torch_function_stack() == 1
        with torch.device("cuda"):
            r, t, z = torch.arange(4), torch.tensor([1, 2]), torch.zeros(3)
            w = torch.nn.Linear(2, 3).weight
        assert [x.device.type for x in (r, t, z, w)] == ["cuda"] * 4
        assert r.cpu().tolist() == [0, 1, 2, 3] and t.cpu().tolist() == [1, 2]
        pinned.copy_(r.float(), non_blocking=True)
        torch.cuda.synchronize()
        assert pinned.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_factory_bound_before_attaching_fills_its_empty_out():
    """`from torch import arange` taken before the device attached bypasses our entry
    points; C++ then fills a zero-size out= tensor, which the device resizes as CUDA
    does (it must not come back empty)."""
    from torch import arange as early_arange

    with so.virtual_device(policy="delay"):
        r = early_arange(1, 8, 2, device="cuda")
        assert r.device.type == "cuda" and r.cpu().tolist() == [1, 3, 5, 7]


def test_torch_tensor_bound_before_attaching_is_refused_by_name():
    """torch.tensor(data, device="cuda") through an early reference copies its data below
    Python dispatch, where nothing reaches the device: refused, not torch's internal assert."""
    from torch import as_tensor as early_as_tensor
    from torch import tensor as early_tensor

    with so.virtual_device(policy="delay"):
        for factory in (early_tensor, early_as_tensor):
            with pytest.raises(so.NotModelledError, match="below Python dispatch"):
                factory([1, 2], device="cuda")
        assert torch.tensor([1, 2], device="cuda").cpu().tolist() == [1, 2]  # the entry point
