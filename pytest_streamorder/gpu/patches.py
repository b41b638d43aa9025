"""Small wrappers, restored on exit, around torch.cuda.Event/Stream methods that no GPU
trace callback reports well: a True query() is a host sync, a wait on a never-recorded
event is noted (CUDA skips it and no trace fires), syncs are timed, delays go before
event records, new streams and events are named from their creating line, and CUDA
graph capture and replay are fed to the model (graphs.py)."""

from __future__ import annotations

import functools
import time

import torch

from ..host_threads import locked
from ..model import Site
from .debug import DEBUG as _DEBUG
from .graphs import install as install_graph_patches

_perf = time.perf_counter


class TorchPatches:
    """Part of CudaBackend: its wrappers around torch.cuda (undone in _teardown)."""

    def _patch(self, owner, name, make) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        if isinstance(original, staticmethod):
            wrapper = staticmethod(functools.wraps(original.__func__)(locked(make(original.__func__))))
        else:
            wrapper = locked(make(original))  # they update the model: any thread may call
            functools.update_wrapper(wrapper, original)
        self._patches.append((owner, name, original))
        setattr(owner, name, wrapper)

    def _patch_torch(self) -> None:
        be = self
        Event, Stream = torch.cuda.Event, torch.cuda.Stream

        def record(orig):
            def record(ev_self, stream=None):
                # torch.cuda.current_stream() costs ~10 us: only a delay needs it here
                # (the original looks the stream up itself).
                if be.active and be.delay.enabled:
                    if stream is None:
                        stream = torch.cuda.current_stream()
                    be._maybe_delay(Site.here(1, be.depth), "event.record", stream)
                prev, be._recording_py = be._recording_py, ev_self
                try:
                    return orig(ev_self, stream)
                finally:
                    be._recording_py = prev
            return record

        def wait(orig):
            def wait(ev_self, stream=None):
                if be.active and ev_self.cuda_event == 0:
                    if stream is None:
                        stream = torch.cuda.current_stream()
                    # Never recorded: CUDA skips the wait and no trace fires. Note it, so
                    # that a race behind it is explained ("waited before the record").
                    be.hb.wait(be._agent_of_stream(stream), be._py_event(ev_self),
                               Site.here(1, be.depth))
                return orig(ev_self, stream)
            return wait

        def event_query(orig):
            def query(ev_self):
                done = orig(ev_self)
                if done and be.active:
                    ev = be._events.get(ev_self.cuda_event)
                    if ev is not None:
                        be.hb.sync_event(ev)
                return done
            return query

        def stream_query(orig):
            def query(st_self):
                done = orig(st_self)
                if done and be.active:
                    be.hb.sync_stream(be._agent_by_ptr(st_self.cuda_stream))
                return done
            return query

        def timed(orig):
            def timed(*args, **kwargs):
                t0 = _perf()
                try:
                    return orig(*args, **kwargs)
                finally:
                    be.host_blocked_s += _perf() - t0
            return timed

        def empty_cache(orig):
            def empty_cache(*args, **kwargs):
                result = orig(*args, **kwargs)
                if be.active:  # cudaFree waits for the device: freed blocks are idle now
                    be.hb.sync_device()
                return result
            return empty_cache

        def new(orig):
            def __new__(cls, *args, **kwargs):
                obj = orig(cls, *args, **kwargs)
                if be.active and "stream_id" not in kwargs:
                    try:
                        be._named_at_creation(obj, Site.here(1, be.depth))
                    except Exception:  # naming is best effort
                        pass
                return obj
            return __new__

        if "flocals" not in _DEBUG:
            self._patch(Event, "__new__", new)
            self._patch(Stream, "__new__", new)
        self._patch(Event, "record", record)
        self._patch(Event, "wait", wait)
        self._patch(Event, "query", event_query)
        self._patch(Stream, "query", stream_query)
        self._patch(Event, "synchronize", timed)
        self._patch(Stream, "synchronize", timed)
        self._patch(torch.cuda, "synchronize", timed)
        self._patch(torch.cuda, "empty_cache", empty_cache)

        # CUDA graphs: capture held back from the model, replays fed to it (graphs.py)
        install_graph_patches(self)
