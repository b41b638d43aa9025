"""One CUDA stream capture in progress, as both backends see it (torch-free).

CUDA's stream capture (cudaStreamBeginCapture .. cudaStreamEndCapture, what
`torch.cuda.graph` does) records work instead of running it. A capture starts on one
stream (the origin); another stream joins it by waiting on an event recorded in it (a
fork), and must be joined back into the origin (the origin waits on an event recorded on
it after its last work) before the capture ends, or CUDA fails with
cudaErrorStreamCaptureUnjoined. A replay issues the recorded steps again: the origin's
on the replay stream, a forked stream's on a private stream of the graph, the records and
waits between them as the graph's internal edges.

`Capture` keeps the steps, in issue order, as (stream, kind, payload) with kind one of
"launch" (payload: what the backend needs to issue the op again), "record" and "wait"
(payload: a fence number, one per captured event record). Streams are any hashable
objects of the backend (the virtual device's streams, the GPU backend's model agents).
"""

from __future__ import annotations

MODES = ("global", "thread_local", "relaxed")


class Capture:
    def __init__(self, name: str, origin, mode: str, thread: int, where: str):
        if mode not in MODES:
            raise RuntimeError(f"Unknown capture error mode. Expected `global`, `thread_local`, "
                               f"or `relaxed`, got {mode}")
        self.name = name  # the graph's, for messages and replayed op names
        self.origin = origin
        self.mode = mode
        self.thread = thread  # the host thread that began it
        self.where = where  # 'file:line' of capture_begin
        self.streams = [origin]  # members in order of joining: lane i of a replay
        self.steps: list[tuple] = []
        self.fences: list[dict] = []  # fence number -> what its record knew (stream -> count)
        self._count = {origin: 0}  # steps per member
        self._known = {origin: {origin: 0}}  # member -> {member: steps of it ordered before}
        self.invalid: str | None = None  # why CUDA invalidated it (an illegal call)

    def member(self, stream) -> bool:
        return stream in self._count

    def _step(self, stream, kind: str, payload) -> None:
        self._count[stream] += 1
        self._known[stream][stream] = self._count[stream]
        self.steps.append((stream, kind, payload))

    def launch(self, stream, payload) -> None:
        self._step(stream, "launch", payload)

    def record(self, stream) -> int:
        """An event recorded on a member: returns its fence number."""
        fence = len(self.fences)
        self._step(stream, "record", fence)
        self.fences.append(dict(self._known[stream]))
        return fence

    def wait(self, stream, fence: int) -> None:
        """`stream` waits on a fence of this capture; a stream not yet a member joins."""
        if stream not in self._count:
            self.streams.append(stream)
            self._count[stream] = 0
            self._known[stream] = {stream: 0}
        known = self._known[stream]
        for s, n in self.fences[fence].items():
            if known.get(s, 0) < n:
                known[s] = n
        self._step(stream, "wait", fence)

    def unjoined(self) -> list:
        """Members whose last step the origin is not ordered after (CUDA refuses to end
        such a capture: cudaErrorStreamCaptureUnjoined)."""
        known = self._known[self.origin]
        return [s for s in self.streams[1:] if known.get(s, 0) < self._count[s]]
