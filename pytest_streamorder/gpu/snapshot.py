"""Memory of broader-scoped fixtures on the GPU backend, kept equal across schedules.

Each schedule runs a test's full setup, call and teardown, but a module- or
session-scoped fixture (or setUpClass) is built once, in the first schedule, and the
test body changes its buffers. Later schedules must start from the memory as it was
when the test started, as on the virtual device (sim/device.py `snapshot`/`restore`).

`take()` waits for the GPU and copies into host memory (pageable: the device
allocator's statistics, which tests assert on, do not move) the bytes of

- every active block of PyTorch's CUDA caching allocator (`torch.cuda.memory_snapshot`),
- every pinned buffer the running schedule has registered (pinned/ PinnedBlocks), held
  by C++ weak references so the snapshot keeps nothing alive.

It is quiet: the running backend is switched off while it works, so the wait adds no
happens-before edge (a fixture's unsynchronized side-stream write stays a race).
`restore()` puts back the bytes of blocks still allocated at the same address with the
same size, and of pinned buffers still alive.

Not covered (documented in the README): pinned buffers that no schedule of this test
has registered yet (a broader fixture's pinned staging built in an earlier test and
not used since), and memory of allocators other than PyTorch's (cudaMalloc by an
extension). A block freed and handed to another tensor of the same size is restored
too: the address is all the caching allocator tells.
"""

from __future__ import annotations

import contextlib

import torch


class _RawCuda:
    """A device byte range as an object torch.as_tensor understands, without a copy."""

    def __init__(self, address: int, size: int):
        self.__cuda_array_interface__ = {
            "shape": (size,), "typestr": "|u1", "data": (address, False), "version": 2}


def _device_bytes(address: int, size: int) -> torch.Tensor:
    return torch.as_tensor(_RawCuda(address, size), device="cuda")


def _host_bytes(storage) -> torch.Tensor:
    t = torch.empty(0, dtype=torch.uint8)
    t.set_(storage, 0, (storage.nbytes(),), (1,))
    return t


@contextlib.contextmanager
def _quiet():
    """The running backend (if any) neither sees nor models what happens inside."""
    from . import backend as gpu_backend

    be = gpu_backend._active
    was = be is not None and be.active
    if was:
        be.active = False
    try:
        with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
            yield be
    finally:
        if was:
            be.active = True


def _active_blocks(device: int) -> list[tuple[int, int]]:
    blocks = []
    for segment in torch.cuda.memory_snapshot():
        if segment.get("device", device) != device:
            continue
        address = segment["address"]
        for block in segment["blocks"]:
            if block["state"] == "active_allocated":
                blocks.append((address, block["size"]))
            address += block["size"]
    return blocks


class GpuMemorySnapshot:
    """Bytes of live device blocks and registered pinned buffers at one moment."""

    def __init__(self, device: int, blocks: list, pinned: list):
        self.device = device
        self.blocks = blocks  # [(address, size, host copy)]
        self.pinned = pinned  # [(C++ weak ref to the storage, host copy)]

    @property
    def nbytes(self) -> int:
        return sum(d.numel() for *_, d in self.blocks) + sum(d.numel() for _, d in self.pinned)

    def restore(self) -> None:
        with _quiet():
            torch.cuda.synchronize()  # nothing queued may write after us
            live = set(_active_blocks(self.device))
            for address, size, data in self.blocks:
                if (address, size) in live:
                    _device_bytes(address, size).copy_(data)
            for weak, data in self.pinned:
                storage = torch.UntypedStorage._new_with_weak_ptr(weak)
                if storage is not None and storage.nbytes() == data.numel():
                    _host_bytes(storage).copy_(data)
            torch.cuda.synchronize()

    def release(self) -> None:
        """Drop the weak references (the snapshot is empty afterwards). Called by its
        owner, never from a finalizer: nothing of ours runs inside the garbage collector
        (see pinned.py)."""
        pinned, self.pinned = self.pinned, []
        for weak, _data in pinned:
            torch.UntypedStorage._free_weak_ref(weak)
        self.blocks = []


def take() -> GpuMemorySnapshot:
    """Wait for the GPU and copy what later schedules must start from."""
    with _quiet() as be:
        torch.cuda.synchronize()
        device = torch.cuda.current_device()
        blocks = [(address, size, _device_bytes(address, size).cpu())
                  for address, size in _active_blocks(device)]
        pinned = []
        if be is not None:
            for storage in be._pinned.live_storages():
                pinned.append((storage._weak_ref(), _host_bytes(storage).clone()))
        return GpuMemorySnapshot(device, blocks, pinned)
