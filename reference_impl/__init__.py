"""Reference publish/resolve (SGLang's FutureMap), an overlap-scheduler loop driving it,
a pure-Python oracle, and a catalogue of broken variants. Imports only torch.

Runs eagerly on device="cpu" and unchanged on "cuda" (a real GPU or the virtual device).
"""

from .future_map import FutureMap, ScheduleBatch, SpecAlgorithm, SpecInfo, device_has_streams
from .mutants import BUG_CLASSES, MUTANTS, REFERENCE, Mutant
from .overlap_loop import Oracle, OverlapLoop, StepResult

__all__ = [
    "BUG_CLASSES",
    "FutureMap",
    "MUTANTS",
    "Mutant",
    "Oracle",
    "OverlapLoop",
    "REFERENCE",
    "ScheduleBatch",
    "SpecAlgorithm",
    "SpecInfo",
    "StepResult",
    "device_has_streams",
]
