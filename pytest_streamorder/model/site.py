"""Where an access came from: a cheap stack capture, formatted only when reported.

Capturing a full `traceback.StackSummary` per device op is what makes PyTorch's CUDA
sanitizer cost 10-20x; we keep (code object, line number) pairs, which costs about a
microsecond, and turn them into text only for the few accesses that end up in a report.
"""

from __future__ import annotations

import os
import sys
import weakref

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


class Site:
    """A captured call stack: innermost frame first."""

    __slots__ = ("frames",)

    def __init__(self, frames: tuple = ()):
        self.frames = frames  # ((code, lineno), ...)

    @staticmethod
    def here(skip: int = 0, depth: int = 10) -> "Site":
        """Capture the caller's stack (skip extra frames above the caller)."""
        frame = sys._getframe(skip + 1)
        frames = []
        append = frames.append
        for _ in range(depth):
            if frame is None:
                break
            append((frame.f_code, frame.f_lineno))
            frame = frame.f_back
        return Site(tuple(frames))

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


def _short(filename: str) -> str:
    """A path relative to the working directory when that is shorter."""
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return rel if not rel.startswith("..") else filename
