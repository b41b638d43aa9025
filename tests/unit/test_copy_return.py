"""copy_ and every in-place op hand back the tensor itself on the virtual device, so code
that returns it (vLLM's CpuGpuBuffer.copy_to_gpu) keeps working: `dst.copy_(src) is dst`.

Before the fix, copy_ returned the private cpu-device twin that the virtual device hands
to torch's guarded C++ methods; using it crashed ("Attempted to access the data pointer
on an invalid python storage").
"""

from __future__ import annotations

import pytest
import torch

import pytest_streamorder as so
from pytest_streamorder.sim.tensor import DeviceTensor

I32 = torch.int32


class Staging:
    """A vLLM-style CpuGpuBuffer of our own: a pinned host tensor the host fills, a device
    twin refreshed by a non_blocking H2D copy whose result the caller keeps using."""

    def __init__(self, n: int):
        self.cpu = torch.zeros(n, dtype=I32, pin_memory=True)
        self.gpu = torch.zeros(n, dtype=I32, device="cuda")

    def copy_to_gpu(self, n: int | None = None) -> torch.Tensor:
        if n is None:
            return self.gpu.copy_(self.cpu, non_blocking=True)
        return self.gpu[:n].copy_(self.cpu[:n], non_blocking=True)

    def copy_to_cpu(self, n: int | None = None) -> torch.Tensor:
        if n is None:
            return self.cpu.copy_(self.gpu, non_blocking=True)
        return self.cpu[:n].copy_(self.gpu[:n], non_blocking=True)


@pytest.mark.parametrize("policy", so.POLICIES)
@pytest.mark.parametrize("non_blocking", [True, False])
def test_copy_returns_the_destination(policy, non_blocking):
    with so.virtual_device(seed=1, policy=policy) as vd:
        pinned = torch.arange(6, dtype=torch.float32).pin_memory()
        pageable = torch.arange(6, dtype=torch.float32)
        dev = torch.empty(6, device="cuda")
        other = torch.full((6,), 7.0, device="cuda")
        for src in (pinned, pageable, other):  # H2D from pinned / pageable, D2D
            r = dev.copy_(src, non_blocking=non_blocking)
            assert r is dev and type(r) is DeviceTensor
            assert r.data_ptr() == dev.data_ptr()
            assert r.sum().item() == src.sum().item()  # usable: no twin behind it
        host_pinned = torch.empty(6, pin_memory=True)
        assert host_pinned.copy_(other, non_blocking=non_blocking) is host_pinned
        host = torch.empty(6)
        assert host.copy_(other, non_blocking=non_blocking) is host
        torch.cuda.synchronize()
        assert host_pinned.tolist() == host.tolist() == [7.0] * 6
        # a view as destination: the view itself comes back
        view = dev[2:4]
        assert view.copy_(pinned[:2], non_blocking=non_blocking) is view
        assert dev.tolist() == [7.0, 7.0, 0.0, 1.0, 7.0, 7.0]
    assert not vd.races


@pytest.mark.parametrize("policy", so.POLICIES)
def test_in_place_ops_return_self(policy):
    with so.virtual_device(seed=2, policy=policy) as vd:
        x = torch.zeros(2, 3, device="cuda")
        idx = torch.tensor([1], device="cuda")
        cases = [
            lambda: x.add_(1), lambda: x.mul_(3), lambda: x.zero_(), lambda: x.fill_(2.0),
            lambda: x.clamp_(min=0), lambda: x.index_put_((idx,), torch.tensor(5.0, device="cuda")),
            lambda: x.index_fill_(1, idx, 4.0), lambda: x.copy_(torch.ones(2, 3)),
            lambda: x.contiguous(), lambda: x.__iadd__(1),
        ]
        for case in cases:
            r = case()
            assert r is x, case
        assert x.tolist() == [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
    assert not vd.races


def test_new_tensor_of_a_device_tensor_is_on_the_device():
    """new_tensor is a guarded method too: it must not take the twin's CPU device."""
    with so.virtual_device(seed=0, policy="lazy"):
        d = torch.zeros(3, dtype=torch.int64, device="cuda")
        r = d.new_tensor([4, 5])
        assert type(r) is DeviceTensor and r.dtype == torch.int64
        assert r.tolist() == [4, 5]
        f = d.new_tensor([1.5], dtype=torch.float32)
        assert f.is_cuda and f.tolist() == [1.5]
        h = d.new_tensor([1], device="cpu")
        assert not h.is_cuda and h.tolist() == [1]


@pytest.mark.parametrize("policy", so.POLICIES)
@pytest.mark.parametrize("seed", range(3))
def test_staging_buffer_returned_rows_are_used(policy, seed):
    """The value copy_to_gpu() returns feeds the next kernel, as in vLLM's model runner."""
    with so.virtual_device(seed=seed, policy=policy) as vd:
        buf = Staging(8)
        done = torch.cuda.Event()
        for step in range(3):
            done.synchronize()  # the previous step's H2D copy has read the host buffer
            buf.cpu[:5] = torch.arange(5, dtype=I32) + 10 * step
            rows = buf.copy_to_gpu(5)
            assert rows.data_ptr() == buf.gpu.data_ptr()
            out = rows * 2  # used on the device, after the copy, on the same stream
            done.record()
            assert out.tolist() == [2 * (i + 10 * step) for i in range(5)]
        whole = buf.copy_to_gpu()
        assert whole is buf.gpu
        back = buf.copy_to_cpu(5)
        torch.cuda.current_stream().synchronize()
        assert back.tolist() == [20, 21, 22, 23, 24]
    assert not vd.races


@pytest.mark.parametrize("seed", range(3))
def test_staging_buffer_refill_before_the_copy_ran_is_a_race(seed):
    """Its broken twin (vLLM #24527): the host refills the pinned buffer while the previous
    step's H2D copy may not have read it yet. Reported whatever the schedule."""
    with so.virtual_device(seed=seed, policy="lazy", raise_on_race=False) as vd:
        buf = Staging(8)
        for step in range(2):
            buf.cpu[:5] = torch.arange(5, dtype=I32) + 10 * step  # no wait on the copy
            rows = buf.copy_to_gpu(5)
            rows.add_(1)
        torch.cuda.synchronize()
    assert vd.races, "the refill before the H2D copy ran was not reported"
    assert "copy" in str(vd.races[0]).lower()
