"""Where an access came from: a cheap stack capture, formatted only when reported.

Capturing a full `traceback.StackSummary` per device op is what makes PyTorch's CUDA
sanitizer cost 10-20x; we keep (code object, line number) pairs, which costs about a
microsecond, and turn them into text only for the few accesses that end up in a report.
"""

from __future__ import annotations

import os
import sys
import weakref
from bisect import bisect_right

def _internal_prefixes() -> tuple[str, ...]:
    """Folders whose frames are our machinery or torch's, not the user's code."""
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    # weakref.py: where a finalizer (our "free" event) runs, not where the user was.
    prefixes = [ours, os.path.abspath(weakref.__file__)]
    # torch's, the test runners' (pytest, unittest), Hypothesis' (a @given test runs
    # inside it), the thread machinery's and Triton's (a kernel launch) frames are
    # machinery too, when loaded.
    for name in ("torch", "pluggy", "_pytest", "hypothesis", "unittest", "threading",
                 "concurrent", "triton"):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            path = os.path.abspath(path)
            # a package: everything in its folder; a module: its one file
            prefixes.append(os.path.dirname(path) + os.sep if hasattr(module, "__path__") else path)
    return tuple(prefixes)


def frame_above(skip: int):
    """sys._getframe(skip) counted from the caller, or None where the stack is shallower:
    a tensor's __del__ runs wherever its last reference went, at the top of a thread or
    of the interpreter too, and a free must never fail for want of a site."""
    try:
        return sys._getframe(skip + 1)
    except ValueError:
        return None


class Site:
    """A captured call stack: innermost frame first.

    `frames` is ((code, line number), ...). here() keeps each frame's instruction offset
    instead and finds the line numbers only when `frames` is first read (most sites are
    never reported): a frame's f_lineno searches its code's line table, an offset is a
    field read."""

    __slots__ = ("_frames", "_raw")

    def __init__(self, frames: tuple = ()):
        self._frames = frames  # ((code, lineno), ...), or None until _raw is converted
        self._raw = None  # ((code, instruction offset in bytes), ...)

    @staticmethod
    def here(skip: int = 0, depth: int = 10) -> "Site":
        """Capture the caller's stack (skip extra frames above the caller)."""
        frame = frame_above(skip + 1)
        raw = []
        append = raw.append
        for _ in range(depth):
            if frame is None:
                break
            append((frame.f_code, frame.f_lasti))
            frame = frame.f_back
        site = _new_site(Site)
        site._frames = None
        site._raw = tuple(raw)
        return site

    @property
    def frames(self) -> tuple:
        frames = self._frames
        if frames is None:
            frames = tuple((code, _line(code, lasti)) for code, lasti in self._raw)
            self._frames, self._raw = frames, None
        return frames

    def lines(self) -> list[str]:
        """'file:line in func' for every captured frame, innermost first."""
        return [f"{_short(code.co_filename)}:{line} in {code.co_name}" for code, line in self.frames]

    def user_lines(self) -> list[str]:
        """The captured frames that are neither ours nor torch's (falls back to all)."""
        prefixes = _internal_prefixes()
        user = [
            f"{_short(code.co_filename)}:{line} in {code.co_name}"
            for code, line in self.frames
            if not os.path.abspath(code.co_filename).startswith(prefixes)
        ]
        return user or self.lines()

    def location(self) -> str:
        """The innermost user frame as 'file:line in func', or '<unknown>'."""
        user = self.user_lines()
        return user[0] if user else "<unknown>"

    def key(self) -> tuple:
        """Identity of the innermost user frame, to group repeated reports."""
        prefixes = _internal_prefixes()
        for code, line in self.frames:
            if not os.path.abspath(code.co_filename).startswith(prefixes):
                return (code.co_filename, line)
        return tuple((c.co_filename, l) for c, l in self.frames[:1])

    def __repr__(self) -> str:
        return f"Site({self.location()})"


UNKNOWN_SITE = Site(())
_new_site = object.__new__

_LINE_TABLES: dict = {}  # code -> (range starts, range ends, line numbers), from co_lines()


def _line(code, offset: int) -> int:
    """The line number of the instruction at byte `offset` of `code` (what the frame's
    f_lineno said while it executed there)."""
    table = _LINE_TABLES.get(code)
    if table is None:
        starts, ends, lines = [], [], []
        for start, end, line in code.co_lines():
            starts.append(start)
            ends.append(end)
            lines.append(line)
        table = _LINE_TABLES[code] = (starts, ends, lines)
    starts, ends, lines = table
    i = bisect_right(starts, offset) - 1
    if i >= 0 and offset < ends[i] and lines[i] is not None:
        return lines[i]
    return code.co_firstlineno  # (no line: an instruction the compiler added)


def _short(filename: str) -> str:
    """A path relative to the working directory when that is shorter."""
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return rel if not rel.startswith("..") else filename
