"""The exceptions a run raises, in one torch-free place (both backends raise them)."""

from __future__ import annotations


class StreamRaceError(AssertionError):
    """A stream-ordering race; the message is the full report."""

    def __init__(self, race):
        super().__init__(str(race))
        self.race = race


class DeviceOpLimitExceeded(RuntimeError):
    """The program issued more device ops than the run allows (max_ops)."""
