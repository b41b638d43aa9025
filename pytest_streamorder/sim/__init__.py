"""The virtual CUDA device: torch.cuda code on a CPU-only machine, with real asynchrony."""

from .device import Schedule, StreamRaceError, VirtualDevice, virtual_device

__all__ = ["Schedule", "StreamRaceError", "VirtualDevice", "virtual_device"]
