"""Triton launches on the real-GPU backend.

A Triton kernel is launched by Triton's own launcher, not through aten, so the dispatch
mode never sees it. While the backend is active, `JITFunction.run` (what `kernel[grid]`,
`@triton.autotune` and `@triton.heuristics` end in, benchmarking runs included) first
tells the detector what the launch reads and writes on the current stream, then
launches it:

- by default, argument-level sets from the kernel's source (ops/triton_access.py): a
  tensor argument whose parameter the kernel loads through is read, one it stores
  through is written (atomics: both), each as the exact set of the view passed;
- or what `triton_accesses(kernel, fn)` declares (views narrower than the arguments).

The GPU's addresses are not seen, so an argument counts whole. That avoids false alarms
when each launch is handed the part it touches (two kernels given `buf[:n]` and
`buf[n:]` on two streams are disjoint); it cannot when a kernel is handed a whole
buffer and touches part of it through scalar offsets or index values while another
stream uses the rest: declare such a kernel's accesses. A kernel whose source does not
show its accesses (pointers reaching inline asm or an unknown call) is refused by name
unless declared.
"""

from __future__ import annotations

import inspect

import torch

from ..errors import NotModelledError
from ..model import Site
from ..ops.triton_access import (base_function, declared_accesses, pointer_kinds, stop_waiting,
                                 when_triton_imported)


class Installed:
    def __init__(self):
        self.saved: list = []  # (owner, name, original)
        self.waiting = None


def install(be) -> Installed:
    done = Installed()
    done.waiting = when_triton_imported(lambda: _patch(be, done))
    return done


def uninstall(done: Installed) -> None:
    stop_waiting(done.waiting)
    while done.saved:
        owner, name, original = done.saved.pop()
        setattr(owner, name, original)


def _patch(be, done: Installed) -> None:
    try:
        from triton.runtime import jit
    except ImportError:  # a broken or stub triton: nothing to follow
        return
    original = jit.JITFunction.__dict__["run"]

    def run(self, *args, grid, warmup, **kwargs):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if be.active and not warmup and _has_cuda_tensor(args, kwargs):
            reads, writes = launch_sets(self, args, kwargs)
            be.custom_kernel(f"Triton kernel {self.__name__}", reads, writes,
                             site=Site.here(1, be.depth))
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    done.saved.append((jit.JITFunction, "run", original))
    jit.JITFunction.run = run


def launch_sets(kernel, args, kwargs, on_device=lambda t: t.is_cuda) -> tuple[list, list]:
    """(reads, writes): the CUDA tensors (`on_device`) one launch reads and writes."""
    bound = _bind(kernel, args, kwargs)
    declared = declared_accesses(kernel)
    if declared is not None:
        reads, writes = declared(**bound)
        return list(reads), list(writes)
    kinds = pointer_kinds(kernel)
    if kinds.unknown:
        raise NotModelledError(
            f"Triton kernel {kernel.__name__!r} on the real-GPU backend",
            f"what it reads and writes cannot be read from its source ({kinds.unknown}); "
            f"declare it with pytest_streamorder.triton_accesses(kernel, fn)")
    reads, writes = [], []
    for name, value in bound.items():
        tensors = [t for t in _tensors_in(value) if on_device(t)]
        if name in kinds.reads:
            reads += tensors
        if name in kinds.writes:
            writes += tensors
    return reads, writes


def _bind(kernel, args, kwargs) -> dict:
    """The launch's arguments by parameter name (launch options such as num_warps are
    not parameters and are left out)."""
    params = inspect.signature(base_function(kernel)).parameters
    values = dict(zip(params, args))
    values.update((k, v) for k, v in kwargs.items() if k in params)
    return values


def _tensors_in(value) -> list:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors_in(v)]
    base = getattr(value, "base", None)  # triton's TensorWrapper and TensorDescriptor
    return [base] if isinstance(base, torch.Tensor) else []


def _has_cuda_tensor(args, kwargs) -> bool:
    return any(t.is_cuda for v in (*args, *kwargs.values()) for t in _tensors_in(v))
