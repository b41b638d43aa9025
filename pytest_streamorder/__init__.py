"""pytest-streamorder: find CUDA stream-ordering bugs in PyTorch code without a GPU.

Importing this package imports no torch; the virtual device loads it on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "virtual_device": "pytest_streamorder.sim.device",
    "VirtualDevice": "pytest_streamorder.sim.device",
    "Schedule": "pytest_streamorder.scheduling",
    "StreamRaceError": "pytest_streamorder.sim.device",
    "POLICIES": "pytest_streamorder.scheduling",
    "ScheduleDiverged": "pytest_streamorder.scheduling",
    "parse_replay": "pytest_streamorder.scheduling",
}


def __getattr__(name):
    """Import the virtual device (and torch) only when it is first used."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_streamorder' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = list(_LAZY)
