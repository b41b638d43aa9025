"""The run's streams and events in the model: CUDA handles and torch stream ids mapped to
model streams (agents) and events, named from the line that created them."""

from __future__ import annotations

import torch

from ..model import Site
from ..ops.frames import user_frames, user_pyframe
from ..ops.naming import name_from_source
from .debug import DEBUG as _DEBUG


def _name_in_frame(match) -> str | None:
    """The variable (or self.attribute) of the innermost user frame holding an object
    for which `match(obj)` is true."""
    frame = user_pyframe(2)
    if frame is None:
        return None
    try:
        for name, value in frame.f_locals.items():
            if match(value):
                return name
        owner = frame.f_locals.get("self")
        if owner is not None and hasattr(owner, "__dict__"):
            for name, value in vars(owner).items():
                if match(value):
                    return name
    except Exception:  # a weird local's __eq__ or property: naming is best effort
        return None
    return None


class StreamsAndEvents:
    """Part of CudaBackend: model streams and events of the run, found or made on first use."""

    def _new_agent(self, ptr: int):
        if ptr == 0:
            base = "default"
        elif "flocals" in _DEBUG:
            base = _name_in_frame(
                lambda v: isinstance(v, torch.cuda.Stream) and v.cuda_stream == ptr) \
                or f"stream#{len(self._by_ptr)}"
        else:
            base = self._stream_names.get(ptr) or f"stream#{len(self._by_ptr)}"
        name, n = base, 1
        while name in self.hb._stream_names or name == "host":
            n += 1
            name = f"{base}#{n}"
        agent = self.hb.new_stream(name)
        self._by_ptr[ptr] = agent
        return agent

    def _agent_by_ptr(self, ptr: int):
        agent = self._by_ptr.get(ptr)
        return agent if agent is not None else self._new_agent(ptr)

    def _agent_by_sid(self, data):
        """data: (stream_id, device_index, device_type) as torch reports them."""
        agent = self._by_sid.get(data[0])
        if agent is None:
            s = torch.cuda.Stream(stream_id=data[0], device_index=data[1], device_type=data[2])
            agent = self._by_sid[data[0]] = self._agent_by_ptr(s.cuda_stream)
        return agent

    def _agent_of_stream(self, stream):
        ptr = getattr(stream, "cuda_stream", None)
        if ptr is not None:
            return self._agent_by_ptr(ptr)
        return self._agent_by_sid((stream.stream_id, stream.device_index, stream.device_type))

    def _current_agent(self):
        return self._agent_by_sid(torch._C._cuda_getCurrentStream(self._device_index))

    def _py_event(self, py):
        """The model event of a torch.cuda.Event object (made on first use)."""
        if isinstance(self._py_events, dict):
            hit = self._py_events.get(id(py))
            if hit is not None:
                return hit[1]
            ev = self.hb.new_event(self._event_name(py, 0))
            self._py_events[id(py)] = (py, ev)
            return ev
        ev = self._py_events.get(py)
        if ev is None:
            ev = self._py_events[py] = self.hb.new_event(self._event_name(py, 0))
        return ev

    def _event_name(self, py, ptr: int) -> str:
        name = None
        if "flocals" in _DEBUG:
            if py is not None:
                name = _name_in_frame(lambda v: v is py)
            else:
                name = _name_in_frame(
                    lambda v: isinstance(v, torch.cuda.Event) and ptr and v.cuda_event == ptr)
        elif py is not None:
            hit = self._event_names.get(id(py))
            name = hit[1] if hit is not None else None
        self._n_events += 1
        return name or f"event#{self._n_events}"

    def _named_at_creation(self, obj, site: Site) -> None:
        """A torch.cuda.Stream/Event made in the run: its name from the creating line."""
        user = user_frames(site)
        name = name_from_source(Site(user), "") if user else ""
        if isinstance(obj, torch.cuda.Event):
            self._event_names[id(obj)] = (obj, name or None)
        elif name:
            ptr = obj.cuda_stream
            self._stream_names[ptr] = name
            agent = self._by_ptr.get(ptr)
            if agent is not None and agent.name != name and name not in self.hb._stream_names:
                self.hb.rename_stream(agent, name)

    def _event_by_ptr(self, ptr: int):
        ev = self._events.get(ptr)
        if ev is None:
            py = self._recording_py
            ev = self._py_event(py) if py is not None else self.hb.new_event(self._event_name(None, ptr))
            self._events[ptr] = ev
        return ev
