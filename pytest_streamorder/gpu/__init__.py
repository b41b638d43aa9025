"""The real-GPU backend: the stream-order race detector fed from a real CUDA run, and
BUGGIFY-style delay injection (torch.cuda._sleep at seeded sites) so that races show up
as stale values.

    from pytest_streamorder.gpu import cuda_backend
    with cuda_backend(seed=0) as be:
        ...                      # unchanged torch.cuda code
    be.races, be.ops_issued, be.schedule.token, be.host_blocked_s

Importing this package imports no torch and needs no CUDA; entering cuda_backend()
needs a CUDA device. See docs/GPU_BACKEND.md.
"""

_LAZY = {
    "cuda_backend": "pytest_streamorder.gpu.backend",
    "CudaBackend": "pytest_streamorder.gpu.backend",
    "CudaSchedule": "pytest_streamorder.gpu.backend",
    "active_backend": "pytest_streamorder.gpu.backend",
    "cycles_per_ms": "pytest_streamorder.gpu.calibration",
    "DelayPlan": "pytest_streamorder.gpu.delay",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_streamorder.gpu' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = list(_LAZY)
