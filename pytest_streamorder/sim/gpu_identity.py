"""Who the virtual GPU says it is: one real GPU model's identity with our name appended
(so code that picks kernels by capability or name takes a real GPU's path, and a report
never mistakes it for hardware), and the CUDA version the session reports. Device
properties, NVML, mem_get_info and the memory statistics all read it from here."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

VIRTUAL = "Virtual, pytest-streamorder"  # in every virtual GPU's name
CUDA_VERSION = "12.4"  # torch.version.cuda while a session runs: a CUDA 12 build's string
NCCL_VERSION = (2, 21, 5)  # torch.cuda.nccl.version(): what torch's CUDA 12.4 wheels bundle


@dataclasses.dataclass(frozen=True)
class VirtualGPU:
    """What the virtual device says it is: the identity of one real GPU model, with our
    name appended, so that code choosing kernels by capability or name takes a real
    GPU's path, and a report never mistakes it for hardware."""

    name: str
    major: int
    minor: int
    total_memory: int
    multi_processor_count: int
    uuid: str

    def properties(self) -> SimpleNamespace:
        """torch.cuda.get_device_properties(): the fields torch's own object has that
        code reads (L2 cache and warp size as on the real model)."""
        return SimpleNamespace(
            name=self.name, major=self.major, minor=self.minor, total_memory=self.total_memory,
            multi_processor_count=self.multi_processor_count, is_integrated=False,
            is_multi_gpu_board=False, uuid=self.uuid, warp_size=32,
            L2_cache_size=(50 if self.major >= 9 else 40) * 2**20,
            max_threads_per_multi_processor=2048, regs_per_multiprocessor=65536,
            gcnArchName="NONE", pci_bus_id=0, pci_device_id=0, pci_domain_id=0)


# streamorder_capability: which GPU the virtual one is (sm80 by default).
GPUS = {
    "sm80": VirtualGPU(f"NVIDIA A100-SXM4-80GB ({VIRTUAL})", 8, 0, 80 * 2**30, 108,
                       "GPU-5f0e7a9c-0000-4000-8000-000000000080"),
    "sm90": VirtualGPU(f"NVIDIA H100 80GB HBM3 ({VIRTUAL})", 9, 0, 80 * 2**30, 132,
                       "GPU-5f0e7a9c-0000-4000-8000-000000000090"),
}
DEFAULT_GPU = GPUS["sm80"]
DEVICE_COUNT = 1
TOTAL_MEMORY = DEFAULT_GPU.total_memory  # every model here has 80 GiB
