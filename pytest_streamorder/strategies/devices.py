"""Which device an overlap program runs on: the virtual device, a real GPU, or the CPU."""

from __future__ import annotations

import os

from hypothesis.errors import InvalidArgument

from ..backend import active_backend

DEVICES = ("auto", "virtual", "cuda", "cpu")
DEVICE_ENV = "STREAMORDER_DEVICE"


def active_virtual_device():
    """The virtual device running now, or None (a real-GPU backend does not count)."""
    backend = active_backend()
    return backend if backend is not None and backend.is_virtual else None


def resolve_device(device: str = "auto") -> str:
    """"virtual", "cuda" or "cpu" for `device` ("auto": $STREAMORDER_DEVICE if set, else
    "cuda" when a real GPU is present, else "virtual")."""
    if device not in DEVICES:
        raise InvalidArgument(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        device = os.environ.get(DEVICE_ENV, "auto") or "auto"
        if device not in DEVICES:
            raise InvalidArgument(f"${DEVICE_ENV} must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        if active_virtual_device() is not None:
            return "virtual"  # torch.cuda is the virtual device's now; __enter__ explains
        import torch

        return "cuda" if torch.cuda.is_available() else "virtual"
    return device
