"""The per-run device-op limit, which stops a runaway test with a named error."""

from __future__ import annotations

from ..errors import DeviceOpLimitExceeded


class OpCounter:
    __slots__ = ("issued", "limit")

    def __init__(self, limit: int | None):
        self.issued = 0
        self.limit = limit  # None: no limit

    def count(self, name: str) -> None:
        """One more device op (`name`, for the message)."""
        self.issued += 1
        if self.limit is not None and self.issued > self.limit:
            raise DeviceOpLimitExceeded(
                f"the program issued more than {self.limit} device ops (at {name}); "
                f"raise max_ops or make the test smaller")
