"""Every error pytest-streamorder raises on purpose, in one place.

Imports nothing heavy (no torch), so that the plugin, the model and user code can name
these classes (`except StreamRaceError`, `pytest.raises(NotModelledError)`) without
starting the virtual device. Each one also subclasses the built-in error a user would
expect, so code written against the built-in keeps working:

  StreamRaceError        AssertionError   a stream-ordering race; the message is the report
  DeviceOpLimitExceeded  RuntimeError     a run issued more device ops than its max_ops
  ScheduleDiverged       RuntimeError     a replayed schedule does not fit the run replaying it
  NotModelledError       NotImplementedError  an API the virtual device does not model
  StaleValueError        AssertionError   an overlap program resolved a value the oracle
                                          says is stale (pytest_streamorder.strategies)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .model import Race


class StreamOrderError(Exception):
    """Base class of the errors above: `except StreamOrderError` catches any of ours."""


class StreamRaceError(StreamOrderError, AssertionError):
    """A stream-ordering race; the message is the full report.

    An AssertionError, so that pytest shows it as a test failure, like the stale value
    the same race can cause."""

    def __init__(self, race: "Race"):
        super().__init__(str(race))
        self.race = race


class StaleValueError(StreamOrderError, AssertionError):
    """A value the FutureMap resolved (host seq_lens_cpu / seq_lens_sum, device seq_lens,
    or new_seq_lens_buf after a full sync) differs from the oracle's ground truth."""


class DeviceOpLimitExceeded(StreamOrderError, RuntimeError):
    """The program issued more device ops than the run's max_ops allows (a runaway test)."""


class ScheduleDiverged(StreamOrderError, RuntimeError):
    """A replayed schedule does not fit the run replaying it: the program took another path
    (it is not deterministic, or it changed since the schedule was recorded)."""

    def __init__(self, step: int, problem: str, what: str = "", streams: Sequence[str] = ()):
        self.step = step  # 0-based index of the choice where it went wrong
        self.problem = problem
        self.what = what
        self.streams = list(streams)
        super().__init__(step, problem, what)

    def __str__(self) -> str:
        where = f" ({self.what})" if self.what else ""
        ready = (f"; ready streams now: {', '.join(repr(s) for s in self.streams)}"
                 if self.streams else "")
        return (f"replayed schedule diverged at choice #{self.step}{where}: {self.problem}"
                f"{ready}. The program took a different path than the recorded run: it is "
                f"not deterministic, or it changed since the schedule was written")


class NotModelledError(StreamOrderError, NotImplementedError):
    """`api` is not modelled by the virtual device. The test fails with this error rather
    than with a raw CPU-build error or a silently different code path.

    A NotImplementedError, so `pytest.raises(NotImplementedError)` still matches."""

    def __init__(self, api: str, hint: str = "", by: str = "the virtual device"):
        message = f"{api} is not modelled by {by}"
        super().__init__(f"{message}: {hint}" if hint else message)
        self.api = api


__all__ = [
    "DeviceOpLimitExceeded", "NotModelledError", "ScheduleDiverged", "StaleValueError",
    "StreamOrderError", "StreamRaceError",
]
