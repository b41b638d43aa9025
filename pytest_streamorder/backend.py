"""The one interface both backends offer, and which one is running now.

A backend is one run of a program with the race detector attached: the virtual device
(`sim.device.VirtualDevice`, CPU only) or the real-GPU backend (`gpu.backend.CudaBackend`).
The plugin, the `streamorder` fixture, the Hypothesis helpers (strategies) and
`stream_benchmark` use only what `Backend` lists, and find the running one with
`active_backend()`, never by looking inside the backends' modules.

At most one backend runs at a time in a process (each patches torch.cuda globally): a
backend calls `activate(self)` when it starts and `deactivate(self)` when it ends, and
`activate` refuses a second one.

Imports no torch: the plugin imports this module when pytest loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Optional, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from .model import Race, Site


@runtime_checkable
class RunSchedule(Protocol):
    """What replays a run: `vd.schedule` (virtual device) or `be.schedule` (real GPU)."""

    policy: str
    seed: Optional[int]
    choices: tuple  # the scheduling choices made (empty on a real GPU: the seed decides)


@runtime_checkable
class Backend(Protocol):
    """One run of a program on one backend, used as `with backend: ...`."""

    is_virtual: bool  # True: the virtual device (queued ops run on CPU); False: a real GPU
    ops_issued: int  # device ops issued so far (counted against max_ops)
    host_blocked_s: float  # time the host spent waiting in syncs (virtual on the sim)

    @property
    def races(self) -> "list[Race]":
        """Every race found so far, in the order found."""

    @property
    def schedule(self) -> RunSchedule:
        """What replays this run."""

    def name_stream(self, stream: Any, name: str) -> None:
        """Use `name` for this stream in race reports and traces."""

    def custom_kernel(self, name: str, reads: Iterable, writes: Iterable, cpu_impl: Any,
                      site: "Site") -> None:
        """A kernel torch cannot see into (Triton, a C++ extension), with its declared
        reads and writes. The virtual device runs `cpu_impl(*reads, *writes)` when its
        stream runs it; a real GPU ignores cpu_impl (the caller launches the kernel)."""

    def __enter__(self) -> "Backend": ...

    def __exit__(self, exc_type, exc, tb) -> Optional[bool]: ...


_active: Optional[Backend] = None


def active_backend() -> Optional[Backend]:
    """The backend running now (virtual device or real GPU), or None."""
    return _active


def activate(backend: Backend) -> None:
    """Called by a backend as it starts. Refuses a second backend while one runs."""
    global _active
    if _active is not None:
        raise RuntimeError(
            f"{_describe(backend)} cannot start while {_describe(_active)} is active: "
            f"nesting is not supported")
    _active = backend


def deactivate(backend: Backend) -> None:
    """Called by a backend as it ends (also after a failed start); a no-op if another
    backend, or none, is the active one."""
    global _active
    if _active is backend:
        _active = None


def _describe(backend: Backend) -> str:
    return "virtual_device()" if getattr(backend, "is_virtual", False) else "cuda_backend()"


__all__: Sequence[str] = ["Backend", "RunSchedule", "activate", "active_backend", "deactivate"]
