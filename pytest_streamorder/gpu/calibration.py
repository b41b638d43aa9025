"""Once per process, before a run: how fast torch.cuda._sleep spins on this GPU, and a
warm-up of every pooled stream (a stream's or kernel's first use can order work by
accident and hide a race for a whole run)."""

from __future__ import annotations

import torch

_cycles_per_ms: float | None = None  # torch.cuda._sleep cycles per millisecond
_warmed_up = False


def cycles_per_ms() -> float:
    """torch.cuda._sleep cycles per millisecond, calibrated on first use."""
    global _cycles_per_ms
    if _cycles_per_ms is None:
        torch.cuda._sleep(1000)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        cycles = 20_000_000
        best = None
        for _ in range(2):
            start.record()
            torch.cuda._sleep(cycles)
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
            best = ms if best is None else min(best, ms)
        _cycles_per_ms = cycles / max(best, 1e-3)
    return _cycles_per_ms


def warm_up_streams() -> None:
    """Put a tiny kernel on every stream of PyTorch's stream pools (and the default
    stream) once per process: a stream's or kernel's first use can order work by
    accident (lazy creation, module loading) and hide a race for a whole run."""
    global _warmed_up
    if _warmed_up:
        return
    torch.cuda.synchronize()
    x = torch.zeros(8, device="cuda")
    for priority in (0, -1):
        for _ in range(32):  # the pools hand out 32 streams per priority, round robin
            s = torch.cuda.Stream(priority=priority)
            with torch.cuda.stream(s):
                torch.cuda._sleep(1)
                x.add_(0)
                torch.cuda.Event().record()
    torch.cuda.synchronize()
    _warmed_up = True
