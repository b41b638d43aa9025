"""A vLLM-style CpuGpuBuffer, written for this suite: a pinned host tensor, a NumPy view of
it that the host fills, and a device twin that an H2D non_blocking copy refreshes."""

import torch


class StagingBuffer:
    def __init__(self, *size, dtype=torch.int32, device="cuda"):
        self.cpu = torch.zeros(*size, dtype=dtype, pin_memory=True)
        self.np = self.cpu.numpy()  # host writes go through this view
        self.gpu = torch.zeros_like(self.cpu, device=device)

    def copy_to_gpu(self, n=None) -> torch.Tensor:
        """Queue the H2D copy of the first n rows; returns the device rows (not yet valid
        on the host's side until the current stream has run the copy)."""
        if n is None:
            return self.gpu.copy_(self.cpu, non_blocking=True)
        return self.gpu[:n].copy_(self.cpu[:n], non_blocking=True)

    def copy_to_cpu(self, n=None) -> torch.Tensor:
        """Queue the D2H copy of the first n rows into the pinned tensor."""
        if n is None:
            return self.cpu.copy_(self.gpu, non_blocking=True)
        return self.cpu[:n].copy_(self.gpu[:n], non_blocking=True)
