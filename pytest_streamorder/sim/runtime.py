"""Which virtual device is active (at most one per process). A leaf module: the other
sim modules ask it for the device instead of importing device.py."""

from __future__ import annotations

_active = None  # the active VirtualDevice, or None


def active_device(what: str):
    """The active VirtualDevice; a named error when there is none."""
    if _active is None:
        raise RuntimeError(
            f"{what} needs an active virtual_device() context (virtual CUDA tensors and "
            f"streams cannot be used after it ends: copy results to the host with .cpu())")
    return _active


def current():
    """The active VirtualDevice, or None."""
    return _active


def set_active(vd) -> None:
    global _active
    _active = vd


# Why the native CUDA device guard (cuda_guard.py) is missing in this process: "" when it
# is in place or was never needed. A session sets it; interception refuses, by name and
# with this reason, the paths whose C++ would otherwise abort the process.
guard_missing = ""


def set_guard_missing(reason: str) -> None:
    global guard_missing
    guard_missing = reason
