"""One aten op on CUDA tensors in the model: its accesses (from the shared op layer:
exact sets, strided views compared element by element), the allocations it made, the
delay injected before it, and whether the host waited. An indexed op's access to `self`
is pending until its index values, copied to a private pinned ring right after it on
the same stream, are read at a later host sync (index_ring.py)."""

from __future__ import annotations

import time

import torch

from ..model import Pending, Site
from ..ops.indexed import indexed
from ..ops.ranges import access_spec, storage_base, tensor_set

aten = torch.ops.aten
T = torch.Tensor
_perf = time.perf_counter


class DeviceOps:
    """Part of CudaBackend: what its dispatch mode does with a device op."""

    def _device_op(self, func, info, args, kwargs, tensors):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
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

        if self._ring is not None:
            self._harvest()  # races it finds are raised by the launch below, at this line
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

        if info.may_copy and _aliases_inputs(out, tensors):
            return out  # it was a view this time: no device work

        accesses = []
        pinned = []  # (tensor, alloc, set, is_write) of pinned host memory: UploadWatches
        sync_after = info.syncs_with(args, kwargs)
        bases = set()
        cpu_involved = False
        ix = indexed(func)
        target = args[0] if ix is not None and args else None
        index_access = None  # (Pending, layout) of an indexed op's access to `self`
        for t, write in tensors:
            if t.is_cuda:
                start, stop, region = tensor_set(t)
                if start == stop:
                    continue
                alloc = self._alloc_of(t, stop, site)
                bases.add(alloc.address)
                if t is target and index_access is None:
                    index_access = (Pending(start, stop, region), (
                        tuple(t.shape), t.stride(), t.storage_offset(), t.element_size()))
                    accesses.append((alloc, index_access[0], write))
                else:
                    accesses.append(access_spec(alloc, start, stop, region, write))
            elif t.dim() > 0 or write:
                cpu_involved = True
                palloc = self._pinned_of(t, site)
                if palloc is not None:
                    start, stop, region = tensor_set(t)
                    if start < stop:
                        accesses.append(access_spec(palloc, start, stop, region, write))
                        pinned.append((t, palloc, (start, stop, region), write))
                elif write:
                    sync_after = True  # a D2H copy into pageable memory: synchronous
        undeclared_views = 0
        if info.returns_tensors and out is not None:
            outs = out if isinstance(out, (list, tuple)) else (out,)
            for i, o in enumerate(outs):
                if not isinstance(o, T) or (info.output_alias(i) is not None
                                            and not info.may_copy):
                    continue
                if o.is_cuda:
                    start, stop, region = tensor_set(o)
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
                    accesses.append(access_spec(alloc, start, stop, region, True))
                else:  # D2H into a new host tensor (Tensor.to("cpu") / .cpu())
                    cpu_involved = True
                    palloc = self._pinned_of(o, site) if o.numel() > 0 else None
                    if palloc is not None:
                        accesses.append(access_spec(palloc, *tensor_set(o), True))
                        pinned.append((o, palloc, tensor_set(o), True))
                    else:
                        sync_after = True
        if info.is_copy and cpu_involved and not _non_blocking(func, args, kwargs):
            sync_after = True
        if undeclared_views and not info.writes and not cpu_involved and not sync_after \
                and not pending and not any(a[-1] for a in accesses):
            return out  # _unsafe_view, unsafe_split: views in all but the schema

        self.op_counter.count(info.name)
        # Trace events the op itself caused (a stream sync, an event) are applied around
        # its launch in the model. A syncing op (item, nonzero, a blocking or pageable
        # copy) syncs after its kernel: the host then knows the op's work. Any other op
        # syncs only to stage an operand (a Python scalar or a pageable tensor copied to
        # the device before the kernel, as `buf[idx] = 7` does): the host learns nothing
        # of the kernel, so those events come first. (After it, the sync would order the
        # kernel before everything the host issues next: a missed race.)
        if not sync_after:
            for fn, fargs in pending:
                fn(*fargs)
        self.hb.launch(agent, info.name, accesses, site)
        if pinned:  # an async read of pinned memory is watched until a sync covers it
            self._uploads.launched(self.hb, agent, pinned, info.name, site, queued=not sync_after)
        if index_access is not None:
            self._stage_indices(ix, index_access, agent, args, kwargs,
                                synced=sync_after or self._synced_in_op)
        if sync_after:
            for fn, fargs in pending:
                fn(*fargs)
        if sync_after:
            self.hb.sync_stream(agent)
        if sync_after or self._synced_in_op:
            self.host_blocked_s += elapsed
        return out


    def _stage_indices(self, ix, index_access, agent, args, kwargs, synced: bool) -> None:
        """Copy the op's index values to the ring on its stream, to resolve its pending
        access at a later host sync; unknown (nothing reported) where that cannot be done."""
        pending, layout = index_access
        ring = self._ring
        if ring is None or torch.cuda.is_current_stream_capturing():
            self.hb.resolve(pending, None)
            return
        # A sync inside the op (a mask through nonzero) came before the copy: only a
        # sync covering a later op of the stream covers the copy too.
        need = agent.clock[agent.id] + (1 if synced else 0)
        ring.stage(self.hb, ix, pending, agent, args, kwargs, layout, need)

    def _harvest(self, force: bool = False) -> None:
        self._ring.harvest(self.hb, force)


def _aliases_inputs(out, tensors) -> bool:
    """Every tensor output shares the storage of some tensor argument."""
    bases = {storage_base(t) for t, _w in tensors}
    outs = out if isinstance(out, (list, tuple)) else (out,)
    return all(not isinstance(o, T) or storage_base(o) in bases for o in outs)


def _non_blocking(func, args, kwargs) -> bool:
    if func is aten.copy_.default:
        return bool(args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
    return bool(kwargs.get("non_blocking", False))
