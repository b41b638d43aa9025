"""CUDA graphs on the virtual device: torch.cuda.CUDAGraph, torch.cuda.graph,
graph_pool_handle and is_current_stream_capturing, as CUDA and PyTorch define them.

Capture runs nothing, as on CUDA: each op issued on a capturing stream (the stream
capture_begin ran on, and any stream that joined by waiting on an event recorded in the
capture) is recorded with its stream, accesses and the closure that computes it, and so
are event records and waits between capture streams (ops/capture.py). Memory allocated
on a capturing stream comes from the graph's private pool (sim/memory.py GraphPool).

`replay()` issues the recorded steps again, as ordinary device work: the origin's on the
stream current at the replay, a forked stream's on a private stream of the graph, the
captured records and waits as the graph's internal edges on private events. So each
replayed op is checked by the model like any kernel, reading and writing the captured
(static) buffers: the host or another stream rewriting a static input while a replay
still reads it is a race, and a replay computes on the buffers' contents when it runs.
As CUDA orders a graph launch after the previous launch of the same graph, each replay
waits for the previous one's end.

Calls CUDA forbids during a capture raise GraphCaptureError, named as CUDA names them
(PyTorch turns cudaErrorStreamCaptureUnsupported into "CUDA error: operation not
permitted when stream is capturing"), and invalidate the capture as CUDA does:
- syncing or querying a capturing stream, an event recorded in a capture, or the device
  (torch.cuda.synchronize, Stream/Event.synchronize and query, .item(), .cpu(),
  .tolist(), blocking copies, copies from pageable host memory);
- in "global" mode any sync or query (CUDA calls them potentially unsafe), from any
  thread; in "thread_local" mode from the capturing thread; "relaxed" allows them;
- work on the default stream while a capture is underway (PyTorch's default stream is
  CUDA's legacy stream: cudaErrorStreamCaptureImplicit);
- a capturing stream waiting on an event recorded outside the capture
  (cudaErrorStreamCaptureIsolation);
- ending a capture with a forked stream not joined back (cudaErrorStreamCaptureUnjoined).
Random ops inside a capture (each replay draws new numbers from the generator's philox
offset) and replaying one graph into another's capture are refused by name.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading

from ..errors import NotModelledError, StreamOrderError
from ..host_threads import locked
from ..model import Pending, Site
from ..ops.capture import Capture
from ..ops.naming import name_from_source
from .memory import GraphPool
from .runtime import active_device
from .streams import VirtualEvent, VirtualStream

NOT_PERMITTED = "CUDA error: operation not permitted when stream is capturing"


class GraphCaptureError(StreamOrderError, RuntimeError):
    """A call CUDA forbids during a stream capture (a RuntimeError, as torch raises)."""


class Graphs:
    """The device's captures in progress, its graph pools and its default capture
    stream (`vd.graphs`)."""

    def __init__(self, vd):
        self.vd = vd
        self.captures: dict = {}  # capturing VirtualStream -> (Capture, VirtualCUDAGraph)
        self.pools: dict[tuple, GraphPool] = {}
        self._ids = itertools.count(1)
        self._capture_stream = None

    # --- queries ------------------------------------------------------------------

    def capture_of(self, stream):
        """(Capture, graph) the stream is part of, or None."""
        return self.captures.get(stream) if self.captures else None

    def pool_for(self, stream) -> GraphPool | None:
        entry = self.capture_of(stream)
        return entry[1]._pool if entry is not None else None

    def is_capturing(self) -> bool:
        return self.capture_of(self.vd.current_stream) is not None

    def default_capture_stream(self) -> VirtualStream:
        """torch.cuda.graph's internal side stream (one per device, like torch's)."""
        if self._capture_stream is None:
            vd = self.vd
            self._capture_stream = VirtualStream(_vd=vd, _name=vd.unique_stream_name("graph_capture"))
        return self._capture_stream

    def new_handle(self) -> tuple:
        return (0, next(self._ids))

    def pool(self, handle) -> GraphPool:
        handle = tuple(handle)
        pool = self.pools.get(handle)
        if pool is None:
            pool = self.pools[handle] = GraphPool(handle)
        return pool

    # --- illegal calls ------------------------------------------------------------

    def _fail(self, capture: Capture, graph, error: str, what: str) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        where = Site.here(2).location()
        message = (f"{error}: {what} at {where} while stream '{_name(capture.origin)}' "
                   f"captures CUDA graph '{capture.name}' (begun at {capture.where}, "
                   f"capture_error_mode={capture.mode!r}); the capture is invalidated")
        capture.invalid = message
        raise GraphCaptureError(message)

    def forbid(self, what: str, stream=None, event=None, device: bool = False) -> None:
        """A host sync or query during a capture: raise what CUDA raises, or nothing."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if not self.captures:
            return
        error = f"{NOT_PERMITTED} (cudaErrorStreamCaptureUnsupported)"
        entry = self.capture_of(stream) if stream is not None else None
        if entry is None and event is not None and event._captured is not None:
            graph = event._captured[0]
            if graph._capture is not None:
                entry = (graph._capture, graph)
        if entry is None and device:
            entry = next(iter(self.captures.values()))
        if entry is None:  # an unrelated stream or event: unsafe only in some modes
            me = threading.get_ident()
            for capture, graph in self._active():
                if capture.mode == "global" or (capture.mode == "thread_local" and capture.thread == me):
                    entry = (capture, graph)
                    break
        if entry is not None:
            self._fail(entry[0], entry[1], error, what)

    def _active(self) -> list:
        seen, out = set(), []
        for capture, graph in self.captures.values():
            if id(capture) not in seen:
                seen.add(id(capture))
                out.append((capture, graph))
        return out

    def _check_default(self, stream, what: str) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if stream is self.vd.default_stream and self.captures:
            capture, graph = self._active()[0]
            self._fail(capture, graph, "CUDA error: operation would make the legacy stream "
                       "depend on a capturing blocking stream (cudaErrorStreamCaptureImplicit)",
                       f"{what} on the default stream")

    def no_random(self, op: str) -> None:
        if self.captures and self.is_capturing():
            raise NotModelledError(f"{op} during a CUDA graph capture", "each replay would draw "
                                   "new numbers from the generator's philox offset; draw them "
                                   "outside the graph")

    # --- what a capturing stream does (hooks of the device and its streams) ------------

    def on_launch(self, stream, name: str, accesses, site: Site, run) -> bool:
        """An op issued on `stream`: True if a capture recorded it (it does not run)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self._check_default(stream, name)
        entry = self.capture_of(stream)
        if entry is None:
            return False
        capture, graph = entry
        # A syncing op (run None) is refused by the sync that follows its launch.
        if run is not None and any(type(a[1]) is Pending for a in accesses if len(a) == 3) and \
                "pending" not in getattr(getattr(run, "__code__", None), "co_varnames", ()):
            raise NotModelledError(f"{name} in a CUDA graph capture",
                                   "its accesses depend on values it reads, and it cannot "
                                   "be told a replay's")
        label = f"{name} [replay of CUDA graph '{capture.name}', captured at {site.location()}]"
        capture.launch(stream, (label, tuple(accesses), run))
        return True

    def on_sleep(self, stream, cycles: int) -> bool:
        self._check_default(stream, "torch.cuda._sleep")
        entry = self.capture_of(stream)
        if entry is None:
            return False
        entry[0].launch(stream, ("_sleep", cycles))
        return True

    def on_record(self, event: VirtualEvent, stream) -> bool:
        """event.record(stream): True if a capture took it (a fence of the graph)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        event._captured = None
        if not self.captures:
            return False
        self._check_default(stream, f"Event.record ({event.name})")
        entry = self.capture_of(stream)
        if entry is None:
            return False
        event._captured = (entry[1], entry[0].record(stream))
        return True

    def on_wait(self, event: VirtualEvent, stream) -> bool:
        """stream.wait_event(event): True if a capture took it (joining `stream` to the
        capture when the event was recorded in one)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        captured = event._captured
        if captured is None and not self.captures:
            return False
        self._check_default(stream, f"wait on event '{event.name}'")
        entry = self.capture_of(stream)
        if captured is not None:
            graph, fence = captured
            capture = graph._capture
            if capture is None:
                raise NotModelledError(
                    f"waiting on event '{event.name}' whose latest record was captured into "
                    f"CUDA graph '{graph.name}'", "record it again outside the capture")
            if entry is not None and entry[0] is not capture:
                self._fail(entry[0], entry[1], "CUDA error: operation would have resulted in "
                           "a merge of two independent capture sequences "
                           "(cudaErrorStreamCaptureMerge)", f"waiting on event '{event.name}'")
            if entry is None:
                self.captures[stream] = (capture, graph)  # a fork: the stream joins
            capture.wait(stream, fence)
            return True
        if entry is not None and event._mark is not None:
            self._fail(entry[0], entry[1], "CUDA error: dependency created on uncaptured work "
                       "in another stream (cudaErrorStreamCaptureIsolation)",
                       f"waiting on event '{event.name}', recorded outside the capture")
        return False

    # --- begin and end ------------------------------------------------------------

    def begin(self, graph, stream, mode: str, site: Site) -> Capture:
        vd = self.vd
        if stream is vd.default_stream:
            raise RuntimeError("CUDA graphs must be captured on a non-default stream. "
                               "(However, after capture, it's ok to replay them on the "
                               "default stream.)")
        if stream in self.captures:
            raise GraphCaptureError(f"CUDA error: operation not permitted when stream is "
                                    f"capturing: stream '{_name(stream)}' already captures "
                                    f"CUDA graph '{self.captures[stream][0].name}'")
        capture = Capture(graph.name, stream, mode, threading.get_ident(), site.location())
        self.captures[stream] = (capture, graph)
        return capture

    def end(self, capture: Capture) -> None:
        for stream in capture.streams:
            self.captures.pop(stream, None)

    def abandon(self) -> None:
        """A test ended with captures in progress: they end without a graph."""
        for capture, graph in self._active():
            graph._abandon()
        self.captures.clear()


class VirtualCUDAGraph:
    """torch.cuda.CUDAGraph on the virtual device."""

    @locked
    def __init__(self, keep_graph: bool = False):
        self._vd = active_device("torch.cuda.CUDAGraph()")
        self.name = name_from_source(Site.here(1), "graph")
        self._capture: Capture | None = None  # while capturing
        self._steps = None  # after a successful capture: [(lane, kind, payload)]
        self._lanes: list = []  # private streams standing in for the forked streams
        self._fences: list = []  # private events for the captured records
        self._done = None  # private event recorded at the end of each replay
        self._pool: GraphPool | None = None

    # --- capture ------------------------------------------------------------------

    @locked
    def capture_begin(self, pool=None, capture_error_mode: str = "global",
                      check_input_liveness: bool = False) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        vd = self._vd
        vd.check_active("CUDAGraph.capture_begin")
        if self._capture is not None or self._steps is not None:
            raise RuntimeError("This CUDAGraph instance already owns a captured graph. To "
                               "capture a new graph, create a new instance.")
        graphs = vd.graphs
        self._capture = graphs.begin(self, vd.current_stream, capture_error_mode, Site.here(1))
        self._pool = graphs.pool(pool if pool is not None else (next(graphs._ids), 0))
        self._pool.users += 1

    @locked
    def capture_end(self) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        vd = self._vd
        capture = self._capture
        if capture is None:
            raise RuntimeError("CUDAGraph.capture_end: no capture is underway on this graph")
        if vd.current_stream is not capture.origin:
            raise RuntimeError("Capture must end on the same stream it began on.")
        vd.graphs.end(capture)
        self._capture = None
        if capture.invalid is not None:
            self._release()
            raise GraphCaptureError("CUDA error: operation failed due to a previous error "
                                    f"during capture (cudaErrorStreamCaptureInvalidated): "
                                    f"{capture.invalid}")
        unjoined = capture.unjoined()
        if unjoined:
            self._release()
            raise GraphCaptureError(
                "CUDA error: capture sequence contains a fork that was not joined to the "
                f"primary stream (cudaErrorStreamCaptureUnjoined): CUDA graph "
                f"'{capture.name}' captured on '{_name(capture.origin)}' forked to "
                f"{', '.join(repr(_name(s)) for s in unjoined)}, which the capture stream "
                f"never waited on after their last work")
        lane_of = {s: i for i, s in enumerate(capture.streams)}
        self._steps = [(lane_of[s], kind, payload) for s, kind, payload in capture.steps]
        self._lanes = [VirtualStream(_vd=vd, _name=vd.unique_stream_name(f"{self.name}.{_name(s)}"))
                       for s in capture.streams[1:]]
        self._fences = [VirtualEvent(_vd=vd, _name=f"{self.name} fence {i}")
                        for i in range(len(capture.fences))]
        self._done = VirtualEvent(_vd=vd, _name=f"{self.name} replay done")

    def _abandon(self) -> None:
        self._capture = None
        self._release()

    def instantiate(self) -> None:
        self._captured("instantiate")

    # --- replay -------------------------------------------------------------------

    @locked
    def replay(self) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        vd = self._vd
        vd.check_active("CUDAGraph.replay")
        self._captured("replay")
        stream = vd.current_stream
        if vd.graphs.capture_of(stream) is not None:
            raise NotModelledError("CUDAGraph.replay during a capture (a child graph node)")
        site = Site.here(1)
        self._check_alive(site)
        lanes = [stream, *self._lanes]
        done = self._done
        if done._mark is not None:  # CUDA: a launch is ordered after the previous one
            done._wait_on(stream, site)
        for lane, kind, payload in self._steps:
            s = lanes[lane]
            if kind == "launch":
                if payload[0] == "_sleep":
                    with _on(vd, s):
                        vd.sleep(payload[1], site)
                    continue
                label, accesses, run = payload
                accesses, run = _fresh(accesses, run)
                vd.launch(label, accesses, site, run, stream=s)
            elif kind == "record":
                self._fences[payload]._record_on(s, site)
            else:
                self._fences[payload]._wait_on(s, site)
        done._record_on(stream, site)

    def _check_alive(self, site: Site) -> None:
        """A replay touching memory freed since the capture uses memory the allocator may
        have handed to someone else: CUDA would silently corrupt it."""
        for _lane, kind, payload in self._steps:
            if kind == "launch" and payload[0] != "_sleep":
                for access in payload[1]:
                    if access[0].freed:
                        alloc = access[0]
                        raise GraphCaptureError(
                            f"replay of CUDA graph '{self.name}' at {site.location()} uses "
                            f"{alloc.label}, freed at {alloc.free_site.location()} after the "
                            f"capture: keep the graph's static tensors alive while it replays")

    # --- lifetime and the rest of the API ------------------------------------------

    def _captured(self, what: str) -> None:
        if self._steps is None:
            raise RuntimeError(f"Called CUDAGraph::{what} without a preceding successful capture.")

    def pool(self) -> tuple:
        if self._pool is None:
            raise RuntimeError("Called CUDAGraph::pool() without a preceding successful capture.")
        return self._pool.handle

    @locked
    def reset(self) -> None:
        if self._capture is not None:
            raise RuntimeError("CUDAGraph.reset during its capture")
        self._steps = None
        self._lanes, self._fences, self._done = [], [], None
        self._release()

    def _release(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.users -= 1
            if pool.users == 0 and self._vd.active:
                self._vd.allocator.release_pool(pool)

    def __del__(self):
        try:
            if self._capture is None:
                self.reset()
        except Exception:  # never raise from the garbage collector
            pass

    def enable_debug_mode(self) -> None:
        return None  # debug_dump is what needs it, and it is refused

    def debug_dump(self, debug_path: str):
        raise NotModelledError("CUDAGraph.debug_dump", "the virtual device has no cudaGraph_t")

    def raw_cuda_graph(self):
        raise NotModelledError("CUDAGraph.raw_cuda_graph", "the virtual device has no cudaGraph_t")

    def raw_cuda_graph_exec(self):
        raise NotModelledError("CUDAGraph.raw_cuda_graph_exec", "the virtual device has no cudaGraphExec_t")

    def get_graph_data(self):
        raise NotModelledError("CUDAGraph.get_graph_data", "the virtual device has no cudaGraph_t")

    def __repr__(self) -> str:
        state = "capturing" if self._capture else "captured" if self._steps is not None else "empty"
        return f"<torch.cuda.CUDAGraph '{self.name}' {state} (virtual)>"


class graph:
    """torch.cuda.graph on the virtual device: the same steps as torch's (synchronize,
    empty_cache, switch to the capture stream, capture_begin; capture_end on exit). When
    the body raised, the capture just ends: the body's error is the one reported."""

    def __init__(self, cuda_graph, pool=None, stream=None, capture_error_mode: str = "global",
                 enable_annotations: bool = False, check_input_liveness: bool = False):
        vd = active_device("torch.cuda.graph()")
        if enable_annotations:
            raise NotModelledError("torch.cuda.graph(enable_annotations=True)")
        self.pool = () if pool is None else (pool,)
        self.capture_stream = stream if stream is not None else vd.graphs.default_capture_stream()
        self.cuda_graph = cuda_graph
        self.capture_error_mode = capture_error_mode
        self._vd = vd
        self._prev = None

    def __enter__(self) -> None:
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        vd = self._vd
        self._prev = vd.current_stream
        vd.current_stream = self.capture_stream
        try:
            self.cuda_graph.capture_begin(*self.pool, capture_error_mode=self.capture_error_mode)
        except BaseException:
            vd.current_stream = self._prev
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.cuda_graph.capture_end()
            elif getattr(self.cuda_graph, "_capture", None) is not None:
                self._vd.graphs.end(self.cuda_graph._capture)
                self.cuda_graph._abandon()
        finally:
            self._vd.current_stream = self._prev


def graph_pool_handle() -> tuple:
    """A fresh pool id for graphs to share (`torch.cuda.graph(g, pool=handle)`)."""
    return active_device("torch.cuda.graph_pool_handle()").graphs.new_handle()


def is_current_stream_capturing() -> bool:
    vd = active_device("torch.cuda.is_current_stream_capturing()")
    return vd.graphs.is_capturing()


# --- helpers ----------------------------------------------------------------------

def _fresh(accesses: tuple, run):
    """A replay's accesses: an indexed op's pending access is new each time (resolved
    from the index values as they are when the replayed op runs)."""
    fresh = None
    out = []
    for access in accesses:
        if len(access) == 3 and type(access[1]) is Pending:
            old = access[1]
            fresh = Pending(old.start, old.stop, old.region)
            access = (access[0], fresh, access[2])
        out.append(access)
    if fresh is not None:
        run = functools.partial(run, pending=fresh)
    return out, run


@contextlib.contextmanager
def _on(vd, stream):
    prev = vd.current_stream
    vd.current_stream = stream
    try:
        yield
    finally:
        vd.current_stream = prev


def _name(stream) -> str:
    return getattr(stream, "name", str(stream))
