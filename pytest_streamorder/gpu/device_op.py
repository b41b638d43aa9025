"""One aten op on CUDA tensors in the model: its accesses (from the shared op layer),
the allocations it made, the delay injected before it, and whether the host waited."""

from __future__ import annotations

import time

import torch

from ..model import Site
from ..ops.ranges import byte_range, storage_base

aten = torch.ops.aten
T = torch.Tensor
_perf = time.perf_counter


class DeviceOps:
    """Part of CudaBackend: what its dispatch mode does with a device op."""

    def _device_op(self, func, info, args, kwargs, tensors):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if info.is_view:
            return func(*args, **kwargs)  # no device work
        site = Site.here(2, self.depth)
        agent = self._current_agent()
        if func is aten.record_stream.default:
            stream = args[1] if len(args) > 1 else kwargs["s"]
            t = args[0]
            if t.numel() > 0:
                self.hb.record_stream(self._alloc_of(t, 0, site), self._agent_of_stream(stream))
            return func(*args, **kwargs)
        if info.is_empty:  # memory only, no kernel
            out = func(*args, **kwargs)
            if isinstance(out, T) and out.is_cuda and out.numel() > 0:
                base = storage_base(out)
                if base not in self._live:
                    self._allocate(out, base, agent, site, info.name)
            return out
        if self.delay.enabled:
            self._maybe_delay(site, info.name)

        self._pending = pending = []
        self._synced_in_op = False
        self._in_op = True
        t0 = _perf()
        try:
            out = func(*args, **kwargs)
        finally:
            self._in_op = False
            self._pending = None
        elapsed = _perf() - t0

        accesses = []
        sync_after = info.syncs_with(args, kwargs)
        bases = set()
        cpu_involved = False
        for t, write in tensors:
            if t.is_cuda:
                start, stop = byte_range(t)
                if start == stop:
                    continue
                alloc = self._alloc_of(t, stop, site)
                bases.add(alloc.address)
                accesses.append((alloc, start, stop, write))
            elif t.dim() > 0 or write:
                cpu_involved = True
                palloc = self._pinned_of(t, site)
                if palloc is not None:
                    start, stop = byte_range(t)
                    if start < stop:
                        accesses.append((palloc, start, stop, write))
                elif write:
                    sync_after = True  # a D2H copy into pageable memory: synchronous
        undeclared_views = 0
        if info.returns_tensors and out is not None:
            outs = out if isinstance(out, (list, tuple)) else (out,)
            for i, o in enumerate(outs):
                if not isinstance(o, T) or info.output_alias(i) is not None:
                    continue
                if o.is_cuda:
                    start, stop = byte_range(o)
                    if start == stop:
                        continue
                    base = storage_base(o)
                    if base in bases:
                        undeclared_views += 1  # a view the schema does not declare
                        continue
                    alloc = self._live.get(base)
                    if alloc is not None and stop > alloc.nbytes:
                        # a stale entry (its free was not traced): the block is new memory
                        self._live.pop(base)
                        self.hb.free(alloc, site)
                        alloc = None
                    if alloc is None:
                        alloc = self._allocate(o, base, agent, site, info.name)
                    accesses.append((alloc, start, stop, True))
                else:  # D2H into a new host tensor (Tensor.to("cpu") / .cpu())
                    cpu_involved = True
                    palloc = self._pinned_of(o, site) if o.numel() > 0 else None
                    if palloc is not None:
                        start, stop = byte_range(o)
                        accesses.append((palloc, start, stop, True))
                    else:
                        sync_after = True
        if info.is_copy and cpu_involved and not _non_blocking(func, args, kwargs):
            sync_after = True
        if undeclared_views and not info.writes and not cpu_involved and not sync_after \
                and not pending and not any(a[3] for a in accesses):
            return out  # _unsafe_view, unsafe_split: views in all but the schema

        self.op_counter.count(info.name)
        self.hb.launch(agent, info.name, accesses, site)
        for fn, fargs in pending:
            fn(*fargs)
        if sync_after:
            self.hb.sync_stream(agent)
        if sync_after or self._synced_in_op:
            self.host_blocked_s += elapsed
        return out


def _non_blocking(func, args, kwargs) -> bool:
    if func is aten.copy_.default:
        return bool(args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
    return bool(kwargs.get("non_blocking", False))
