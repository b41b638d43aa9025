"""A virtual NVML: while the virtual device is attached, `pynvml` (nvidia-ml-py) and any
module that vendors it under that name (vLLM's `vllm.third_party.pynvml`) answer for the
virtual GPU, so code that decides its platform through NVML (vLLM does, not through
torch) takes its CUDA path instead of silently falling back to the CPU one.

What NVML reports about the GPU's identity is answered from gpu_identity; every other
`nvml*` function is refused by name (NotModelledError): utilisation, clocks, power, ...
have no meaning for a virtual device. Modules imported later are patched when they are
imported (a meta-path hook); everything is put back when the device detaches.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from types import SimpleNamespace

from ..errors import NotModelledError

_HANDLE = "virtual-gpu-0"  # the one device handle: opaque to callers


def _is_nvml(name: str, module) -> bool:
    return (name == "pynvml" or name.endswith(".pynvml")) and hasattr(module, "nvmlInit")


def _answers(gpu) -> dict:
    """NVML functions that have an answer for the virtual GPU."""

    def handle(index=0, *rest):
        if index != 0:
            raise NotModelledError(f"nvmlDeviceGetHandleByIndex({index})",
                                   "the virtual GPU is device 0 only")
        return _HANDLE

    nothing = lambda *a, **k: None  # noqa: E731
    return {
        "nvmlInit": nothing, "nvmlInitWithFlags": nothing, "nvmlShutdown": nothing,
        "nvmlDeviceGetCount": lambda: 1,
        "nvmlDeviceGetHandleByIndex": handle,
        "nvmlDeviceGetHandleByUUID": lambda uuid: _HANDLE,
        "nvmlDeviceGetHandleByPciBusId": lambda bus_id: _HANDLE,
        "nvmlDeviceGetIndex": lambda h: 0,
        "nvmlDeviceGetMinorNumber": lambda h: 0,
        "nvmlDeviceGetName": lambda h: gpu.name,
        "nvmlDeviceGetUUID": lambda h: gpu.uuid,
        "nvmlDeviceGetCudaComputeCapability": lambda h: (gpu.major, gpu.minor),
        "nvmlDeviceGetMemoryInfo": lambda h, *v: SimpleNamespace(
            total=gpu.total_memory, free=gpu.total_memory, used=0),
        "nvmlSystemGetDriverVersion": lambda: "550.54.15",
        "nvmlSystemGetCudaDriverVersion": lambda: 12040,
        "nvmlSystemGetCudaDriverVersion_v2": lambda: 12040,
    }


def _refusal(name: str):
    def refuse(*args, **kwargs):
        raise NotModelledError(f"NVML's {name}", "the virtual GPU answers only identity "
                               "queries (count, name, capability, memory, uuid)")
    refuse.__name__ = name
    return refuse


class VirtualNVML(importlib.abc.MetaPathFinder):
    """Patches NVML modules, those imported already and those imported from now on."""

    def __init__(self, gpu):
        self._answers = _answers(gpu)
        self._saved: list = []  # (module, name, original)
        self._importing: set = set()

    def install(self) -> "VirtualNVML":
        for name, module in list(sys.modules.items()):
            if module is not None and _is_nvml(name, module):
                self._patch(module)
        sys.meta_path.insert(0, self)
        return self

    def undo(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for module, name, original in reversed(self._saved):
            setattr(module, name, original)
        self._saved.clear()

    def _patch(self, module) -> None:
        for name in dir(module):
            original = getattr(module, name)
            if not name.startswith("nvml") or not callable(original):
                continue
            self._saved.append((module, name, original))
            setattr(module, name, self._answers.get(name) or _refusal(name))

    # importlib: let the normal finders load the module, then patch it.
    def find_spec(self, fullname, path, target=None):
        if not (fullname == "pynvml" or fullname.endswith(".pynvml")) \
                or fullname in self._importing:
            return None
        self._importing.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._importing.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        loader, finder = spec.loader, self

        class _Patching(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                if _is_nvml(fullname, module):
                    finder._patch(module)

        spec.loader = _Patching()
        return spec
