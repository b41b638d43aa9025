"""Schedules drawn from Hypothesis: a scheduling policy of the virtual device, and a
chooser that draws every scheduling decision from the test case, so that a failing
schedule shrinks together with the program."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

# The virtual device's scheduling policies (pytest_streamorder.scheduling.POLICIES;
# repeated here so that importing this module does not import torch; a test checks they
# agree). Ordered so that Hypothesis shrinks toward the simplest one.
POLICIES = ("eager", "lazy", "random", "pct", "delay")


def policies(allowed: Sequence[str] = POLICIES) -> st.SearchStrategy[str]:
    """One of the virtual device's scheduling policies; labels each with
    `event("policy: <name>")` so Hypothesis' statistics show which were reached."""
    allowed = tuple(allowed)
    unknown = [p for p in allowed if p not in POLICIES]
    if not allowed or unknown:
        raise InvalidArgument(f"policies must be a non-empty subset of {POLICIES}, got {allowed}")

    def label(policy: str) -> str:
        event(f"policy: {policy}")
        return policy

    return st.sampled_from(allowed).map(label)


class HypothesisChooser:
    """The virtual device's source of scheduling decisions, drawn from a Hypothesis test
    case, so that a failing schedule shrinks with the program (toward choice 0: run the
    first ready stream, as the eager policy does).

    `data` is what `st.data()` gives (or its `.conjecture_data`). Choices are drawn
    quietly, without a "Draw n:" line each. Same interface as
    pytest_streamorder.scheduling.Chooser: `choose(n) -> int in [0, n)` and the
    `choices` made so far (for `virtual_device(replay=vd.schedule)`).
    """

    def __init__(self, data: Any):
        cd = getattr(data, "conjecture_data", data)
        draw_integer = getattr(cd, "draw_integer", None)
        if draw_integer is not None:
            self._draw = lambda n: draw_integer(0, n - 1)
        elif hasattr(cd, "draw"):
            self._draw = lambda n: cd.draw(st.integers(0, n - 1))
        else:
            raise InvalidArgument(f"HypothesisChooser needs st.data()'s object, got {data!r}")
        self._data = cd
        self.choices: list[int] = []
        self.frozen = False

    def choose(self, n: int) -> int:
        if n <= 1:
            return 0
        # After the test case ended (its data concluded: passed, failed or overran), work
        # still queued runs without drawing: a draw from frozen data raises `Frozen`
        # and would hide how the example really ended.
        if self.frozen or getattr(self._data, "frozen", False):
            self.frozen = True
            c = 0
        else:
            c = self._draw(n)
        self.choices.append(c)
        return c

    def freeze(self) -> None:
        """From now on choose 0 without drawing: for work that runs after the test case
        ended (the final drain when the device closes)."""
        self.frozen = True


@dataclasses.dataclass
class DrawnSchedule:
    """A schedule for the virtual device whose choices come from Hypothesis: pass to
    `run_program(schedule=...)`, or use `policy` and `chooser` with
    `virtual_device(policy=s.policy, chooser=s.chooser)`."""

    policy: str
    chooser: HypothesisChooser

    def __repr__(self) -> str:
        return f"schedule(policy={self.policy!r})"


def schedules(allowed: Sequence[str] = POLICIES) -> st.SearchStrategy[DrawnSchedule]:
    """A scheduling policy (see `policies`) and a `HypothesisChooser` drawing every
    scheduling decision from the same test case, so the schedule shrinks with it."""
    return st.builds(_drawn_schedule, policies(allowed), st.data())


def _drawn_schedule(policy: str, data) -> DrawnSchedule:
    return DrawnSchedule(policy, HypothesisChooser(data))
