"""pytest-streamorder: find CUDA stream-ordering bugs in PyTorch code without a GPU.

Importing this package imports no torch; the virtual device loads it on first use. The
names below are imported when first used: the errors and the backend interface are
torch-free, the virtual device is not.
"""

__version__ = "0.1.0"

_LAZY = {
    # the virtual device (imports torch)
    "virtual_device": "pytest_streamorder.sim.device",
    "VirtualDevice": "pytest_streamorder.sim.device",
    "Schedule": "pytest_streamorder.scheduling",
    "POLICIES": "pytest_streamorder.scheduling",
    "parse_replay": "pytest_streamorder.scheduling",
    # custom ops and extension stand-ins, for conftest.py (imports torch)
    "custom_op": "pytest_streamorder.ops.custom",
    "stand_in_module": "pytest_streamorder.ops.custom",
    # errors (torch-free)
    "StreamOrderError": "pytest_streamorder.errors",
    "StreamRaceError": "pytest_streamorder.errors",
    "DeviceOpLimitExceeded": "pytest_streamorder.errors",
    "ScheduleDiverged": "pytest_streamorder.errors",
    "NotModelledError": "pytest_streamorder.errors",
    "StaleValueError": "pytest_streamorder.errors",
    # the interface both backends offer, and the running one (torch-free)
    "Backend": "pytest_streamorder.backend",
    "active_backend": "pytest_streamorder.backend",
    # what a user tells us about a Triton kernel (torch-free)
    "triton_config": "pytest_streamorder.ops.triton_access",
    "triton_accesses": "pytest_streamorder.ops.triton_access",
}


def __getattr__(name):
    """Import a name's module only when the name is first used."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_streamorder' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = list(_LAZY)
