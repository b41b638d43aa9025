"""Which stack frames are the user's code: everything outside our package, torch, the
test runner and weakref (where a finalizer runs). Decided once per code object."""

from __future__ import annotations

import os

from ..model import Site
from ..model.site import _internal_prefixes, frame_above

_INTERNAL: dict = {}  # code object -> whether it is machinery, not the user's code


def is_internal(code) -> bool:
    flag = _INTERNAL.get(code)
    if flag is None:
        flag = _INTERNAL[code] = os.path.abspath(code.co_filename).startswith(_internal_prefixes())
    return flag


def user_frames(site: Site) -> tuple:
    """The site's frames from the innermost user frame outwards; () if none."""
    frames = site.frames
    for i, (code, _line) in enumerate(frames):
        if not is_internal(code):
            return frames[i:]
    return ()


def user_site(site: Site) -> Site:
    """The site trimmed to its innermost user frame (unchanged if it has none)."""
    user = user_frames(site)
    return Site(user) if user else site


def user_pyframe(skip: int = 1):
    """The innermost live frame of user code above the caller, or None."""
    frame = frame_above(skip)
    while frame is not None and is_internal(frame.f_code):
        frame = frame.f_back
    return frame


def user_location_here(skip: int = 1) -> Site:
    """A Site of just the innermost user frame above the caller (a full capture if none
    is the user's): for events and frees, whose reports name only their location.
    Cheaper than Site.here when the call comes from deep inside torch (a trace callback)."""
    frame = user_pyframe(skip + 2)  # (user_pyframe counts from its own caller)
    if frame is None:
        return Site.here(skip + 1)
    return Site(((frame.f_code, frame.f_lineno),))
