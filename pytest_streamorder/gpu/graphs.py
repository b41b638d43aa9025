"""CUDA graphs under the real-GPU backend: capture and replay run for real; the detector
sees each replay as the captured ops issued again on the replay stream.

While a stream captures, CUDA runs nothing, so what the backend learns of the captured
work (ops from the dispatch mode, event records and waits from the trace callbacks) must
not reach the model as work: `CapturingModel` stands in for the backend's HappensBefore
from the first capture_begin on and keeps, per capture (ops/capture.py), each op's
accesses and the records and waits between capture streams. `replay()` feeds them to the
real model after the real replay was launched: the origin's ops on the stream current at
the replay, a forked stream's on a model stream of the graph, the captured records and
waits on model events of the graph, after the previous replay of the same graph (CUDA
orders a launch after the previous one). PyTorch's sanitizer never sees replays.

What a replay cannot tell us, and how that stays free of false alarms:
- an indexed op's exact elements (its index values are not copied while capturing, and
  a replay's are not read): its access is given as unknown (nothing reported for it);
- memory the capture allocated lives in the graph's private pool, and PyTorch frees it
  into that pool: such an allocation stays live in the model (a replay still writes it),
  and a later capture that gets the same block uses the same model allocation, so two
  graphs sharing a pool conflict where their memory does. An allocation the user freed
  after the capture (a static input) is skipped by replays (CUDA would touch freed
  memory: a bug the model does not judge on a GPU).
No delay is injected and no index values are copied while a capture is underway.
"""

from __future__ import annotations

import threading

from ..model import Pending, Site
from ..model.site import UNKNOWN_SITE
from ..ops.capture import Capture
from .streams import _name_in_frame


class CapturingModel:
    """The backend's HappensBefore, with captured work held back (module docstring).
    Everything it does not override goes to the real model."""

    def __init__(self, hb):
        self._hb = hb
        self.captures: dict = {}  # capturing agent -> (Capture, GraphRecord)
        self._fences: dict = {}  # id(model Event) -> (Event, (Capture, GraphRecord), fence)
        self._graph_allocs: dict = {}  # device address -> allocation a capture made

    def __getattr__(self, name):
        return getattr(self._hb, name)

    def launch(self, stream, op, accesses=(), site=UNKNOWN_SITE):
        entry = self.captures.get(stream)
        if entry is None:
            return self._hb.launch(stream, op, accesses, site)
        capture = entry[0]
        label = f"{op} [replay of CUDA graph '{capture.name}', captured at {site.location()}]"
        capture.launch(stream, (label, tuple(accesses)))
        return []

    def record(self, event, stream, site=UNKNOWN_SITE):
        entry = self.captures.get(stream)
        if entry is None:
            self._fences.pop(id(event), None)
            return self._hb.record(event, stream, site)
        self._fences[id(event)] = (event, entry, entry[0].record(stream))
        return None

    def wait(self, stream, event, site=UNKNOWN_SITE):
        hit = self._fences.get(id(event))
        if hit is not None and hit[1][0].invalid is None and hit[1][1].capture is hit[1][0]:
            capture = hit[1][0]
            self.captures.setdefault(stream, hit[1])  # a fork: the stream joins
            capture.wait(stream, hit[2])
            return None
        return self._hb.wait(stream, event, site)

    def allocate(self, nbytes, label, site=UNKNOWN_SITE, *, stream=None, space="device",
                 address=None):
        if stream is not None and stream in self.captures and address is not None:
            old = self._graph_allocs.get(address)
            if old is not None and nbytes <= old.nbytes:
                old.label = label  # the pool block again: one allocation for its life
                return old
            alloc = self._hb.allocate(nbytes, label, site, stream=stream, space=space,
                                      address=address)
            self._graph_allocs[address] = alloc
            return alloc
        return self._hb.allocate(nbytes, label, site, stream=stream, space=space, address=address)

    def free(self, alloc, site=UNKNOWN_SITE):
        if alloc.address is not None and self._graph_allocs.get(alloc.address) is alloc:
            return None  # back to the graph's pool: replays still touch it
        return self._hb.free(alloc, site)

    def end(self, capture: Capture) -> None:
        for stream in capture.streams:
            self.captures.pop(stream, None)


class GraphRecord:
    """What the model knows of one torch.cuda.CUDAGraph: its capture, then its steps."""

    def __init__(self):
        self.capture: Capture | None = None
        self.steps: list | None = None
        self.lanes: list = []  # model streams of the forked streams
        self.fences: list = []
        self.done = None  # model event recorded at the end of each replay
        self.replayed = False


def install(be) -> None:
    """Wrap torch.cuda.CUDAGraph's capture_begin / capture_end / replay / reset (restored
    with the backend's other patches)."""
    import torch

    records: dict = {}  # id(CUDAGraph) -> (graph, GraphRecord); strong: ids stay unique

    def model() -> CapturingModel:
        if not isinstance(be.hb, CapturingModel):
            be.hb = CapturingModel(be.hb)
        return be.hb

    def record_of(graph) -> GraphRecord:
        hit = records.get(id(graph))
        if hit is None or hit[0] is not graph:
            hit = records[id(graph)] = (graph, GraphRecord())
        return hit[1]

    def capture_begin(orig):
        def capture_begin(graph, *args, **kwargs):
            if not be.active:
                return orig(graph, *args, **kwargs)
            site = Site.here(1, be.depth)
            mode = kwargs.get("capture_error_mode", args[1] if len(args) > 1 else "global")
            agent = be._current_agent()
            orig(graph, *args, **kwargs)  # CUDA checks first (default stream, mode, ...)
            rec = record_of(graph)
            name = _name_in_frame(lambda v: v is graph) or f"graph#{len(records)}"
            rec.capture = Capture(name, agent, mode, threading.get_ident(), site.location())
            model().captures[agent] = (rec.capture, rec)
        return capture_begin

    def capture_end(orig):
        def capture_end(graph, *args, **kwargs):
            hit = records.get(id(graph))
            rec = hit[1] if hit is not None and hit[0] is graph else None
            capture = rec.capture if rec is not None else None
            try:
                result = orig(graph, *args, **kwargs)
            except BaseException:
                if capture is not None:  # CUDA refused it: no graph to replay
                    rec.capture = None
                    be.hb.end(capture)
                raise
            if capture is not None:
                rec.capture = None
                be.hb.end(capture)
                _finish(be, rec, capture)
            return result
        return capture_end

    def replay(orig):
        def replay(graph, *args, **kwargs):
            result = orig(graph, *args, **kwargs)
            hit = records.get(id(graph))
            if be.active and hit is not None and hit[0] is graph and hit[1].steps is not None:
                _feed_replay(be, hit[1], Site.here(1, be.depth))
            return result
        return replay

    def reset(orig):
        def reset(graph, *args, **kwargs):
            records.pop(id(graph), None)
            return orig(graph, *args, **kwargs)
        return reset

    cls = torch.cuda.graphs.CUDAGraph
    be._patch(cls, "capture_begin", capture_begin)
    be._patch(cls, "capture_end", capture_end)
    be._patch(cls, "replay", replay)
    be._patch(cls, "reset", reset)


def _finish(be, rec: GraphRecord, capture: Capture) -> None:
    """A capture ended (CUDA accepted it): keep its steps for replays."""
    hb = be.hb
    lane_of = {s: i for i, s in enumerate(capture.streams)}
    rec.steps = [(lane_of[s], kind, payload) for s, kind, payload in capture.steps]
    rec.lanes = []
    for s in capture.streams[1:]:
        base = name = f"{capture.name}.{s.name}"
        n = 1
        while name in hb._stream_names or name == "host":
            n += 1
            name = f"{base}#{n}"
        rec.lanes.append(hb.new_stream(name))
    rec.fences = [hb.new_event(f"{capture.name} fence {i}") for i in range(len(capture.fences))]
    rec.done = hb.new_event(f"{capture.name} replay done")
    rec.replayed = False


def _feed_replay(be, rec: GraphRecord, site: Site) -> None:
    hb = be.hb
    agent = be._current_agent()
    if rec.replayed:  # a launch is ordered after the previous launch of the graph
        hb.wait(agent, rec.done, site)
    lanes = [agent, *rec.lanes]
    for lane, kind, payload in rec.steps:
        stream = lanes[lane]
        if kind == "launch":
            label, accesses = payload
            fresh, unknown = [], []
            for access in accesses:
                if access[0].freed:
                    continue  # freed by the user after the capture (module docstring)
                if len(access) == 3 and type(access[1]) is Pending:
                    pending = Pending(access[1].start, access[1].stop, access[1].region)
                    unknown.append(pending)
                    access = (access[0], pending, access[2])
                fresh.append(access)
            be.op_counter.count(label)
            hb.launch(stream, label, fresh, site)
            for pending in unknown:
                hb.resolve(pending, None)  # a replay's index values are not read
        elif kind == "record":
            hb.record(rec.fences[payload], stream, site)
        else:
            hb.wait(stream, rec.fences[payload], site)
    hb.record(rec.done, agent, site)
    rec.replayed = True
