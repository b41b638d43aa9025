"""PyTorch's GPU trace callbacks (torch.cuda._gpu_trace): event record and wait,
stream/event/device synchronize, allocator frees. They fire inside torch's C++, where an
exception is only logged, so nothing here raises a race: races come from launches and
host accesses. Callbacks that fire while an op runs are applied after its launch."""

from __future__ import annotations

from ..host_threads import locked
from ..model import Site
from ..ops.frames import user_location_here
from .debug import DEBUG as _DEBUG


class TraceCallbacks:
    """Part of CudaBackend: the trace callbacks and their registration."""

    def _install_callbacks(self) -> None:
        import torch
        import torch.cuda._gpu_trace as gpu_trace

        torch._C._activate_gpu_trace()  # idempotent; PyTorch has no way to switch it off
        callbacks = [
            (gpu_trace.EventRecordCallbacks, self._cb_record),
            (gpu_trace.EventWaitCallbacks, self._cb_wait),
            (gpu_trace.StreamSynchronizationCallbacks, self._cb_sync_stream),
            (gpu_trace.EventSynchronizationCallbacks, self._cb_sync_event),
            (gpu_trace.DeviceSynchronizationCallbacks, self._cb_sync_device),
        ]
        if "nofree" not in _DEBUG:
            callbacks.append((gpu_trace.MemoryDeallocationCallbacks, self._cb_free))
        if "evdelete" in _DEBUG:
            # Not needed: a CUDA event is created at its first record, so a reused handle
            # is always recorded (replacing the capture) before anything waits on it.
            callbacks.append((gpu_trace.EventDeletionCallbacks, self._cb_event_deleted))
        if "nocallbacks" in _DEBUG:
            callbacks = []
        for registry, cb in callbacks:
            cb = locked(cb)  # they fire in whichever thread made the CUDA call
            registry.callback_list.append(cb)
            self._callbacks.append((registry, cb))

    def _remove_callbacks(self) -> None:
        for registry, cb in self._callbacks:
            # CallbackRegistry has no remove(); its list is plain. `active` gates too.
            try:
                registry.callback_list.remove(cb)
            except ValueError:
                pass
        self._callbacks.clear()

    def _defer(self, fn, *args) -> None:
        if self._in_op:
            self._pending.append((fn, args))
        else:
            fn(*args)

    # Event and free sites are reported by their location only (report.py): the user's
    # frame is enough, and cheaper to find than a full stack from inside torch's C++.

    def _cb_record(self, event: int, stream: int) -> None:
        if self.active:
            self._defer(self._record, event, stream, user_location_here(1))

    def _record(self, event: int, stream: int, site: Site) -> None:
        self.hb.record(self._event_by_ptr(event), self._agent_by_ptr(stream), site)

    def _cb_wait(self, event: int, stream: int) -> None:
        if self.active:
            self._defer(self._wait, event, stream, user_location_here(1))

    def _wait(self, event: int, stream: int, site: Site) -> None:
        self.hb.wait(self._agent_by_ptr(stream), self._event_by_ptr(event), site)

    def _cb_event_deleted(self, event: int) -> None:
        if self.active:
            self._events.pop(event, None)  # the handle may be reused by a new event

    def _cb_sync_stream(self, stream: int) -> None:
        if self.active:
            if self._in_op:
                self._synced_in_op = True
            self._defer(self._sync_stream, stream)

    def _sync_stream(self, stream: int) -> None:
        self.hb.sync_stream(self._agent_by_ptr(stream))

    def _cb_sync_event(self, event: int) -> None:
        if self.active:
            self._defer(self._sync_event, event)

    def _sync_event(self, event: int) -> None:
        ev = self._events.get(event)
        if ev is not None:
            self.hb.sync_event(ev)

    def _cb_sync_device(self) -> None:
        if self.active:
            self._defer(self.hb.sync_device)

    def _cb_free(self, ptr: int) -> None:
        # Handled at once, even inside an op: the op's accesses are looked up after it
        # ran, so a block it freed (resize_ of an out= tensor) is never touched as live.
        if self.active:
            alloc = self._live.pop(ptr, None)
            if alloc is not None:
                self.hb.free(alloc, user_location_here(1))
