"""The Chooser: the one source of every scheduling decision, and what it remembers to
replay them.

A decision is `choose(n)`: an int in [0, n). Seeded, the chooser draws it from its own
random.Random; replaying, it hands back the recorded value. It records the value and, so
that a replay notices the first step where the program went another way, how many
options there were (`options`). `what` says what a decision is for: it is only read when
a replay diverges, to say so in words.

Torch-free (its one import is the error class): the scheduler, the written form and the plugin all use it.
"""

from __future__ import annotations

import random
from typing import Sequence

from ..errors import ScheduleDiverged


class Chooser:
    """Seeded (`Chooser(seed)`) or replaying (`Chooser(replay=[...])`); records every
    decision in `choices`, and the number of options each had in `options`.

    `replay_options`, when given (the written form carries it), is checked at every step:
    a replay diverges at the first step whose number of options differs, even where the
    recorded value would still fit."""

    def __init__(self, seed: int | None = None, replay: Sequence[int] | None = None,
                 replay_options: Sequence[int] | None = None):
        self._rng = random.Random(seed)
        self._replay = list(replay) if replay is not None else None
        if replay_options is not None and (self._replay is None
                                           or len(replay_options) != len(self._replay)):
            raise ValueError("replay_options needs replay= of the same length")
        self._replay_options = list(replay_options) if replay_options is not None else None
        self.choices: list[int] = []
        self.options: list[int] = []

    @property
    def replaying(self) -> bool:
        return self._replay is not None

    def choose(self, n: int, what: str = "") -> int:
        """An int in [0, n). A decision with one option is not a decision: not recorded."""
        if n <= 1:
            return 0
        i = len(self.choices)
        if self._replay is not None:
            c = self._replayed(i, n, what)
        else:
            c = self._rng.randrange(n)
        self.choices.append(c)
        self.options.append(n)
        return c

    def _replayed(self, i: int, n: int, what: str) -> int:
        if i >= len(self._replay):
            raise ScheduleDiverged(
                i, f"the recorded run made only {len(self._replay)} choice(s), this run asks "
                   f"for another, among {n} options", what)
        c = self._replay[i]
        if self._replay_options is not None and self._replay_options[i] != n:
            raise ScheduleDiverged(
                i, f"the recorded run chose {c} of {self._replay_options[i]} options here, "
                   f"this run has {n}", what)
        if not 0 <= c < n:
            raise ScheduleDiverged(
                i, f"the recorded run chose {c} here, this run has only {n} options", what)
        return c

    def unused(self) -> int:
        """Recorded choices this run has not asked for (yet); 0 when not replaying. A run
        that ends with some left diverged too: it did less than the recorded run."""
        return 0 if self._replay is None else len(self._replay) - len(self.choices)

    def check_finished(self) -> None:
        """Raise ScheduleDiverged if the run ended with recorded choices left unused."""
        left = self.unused()
        if left:
            done = len(self.choices)
            raise ScheduleDiverged(
                done, f"the run ended after {done} of the {len(self._replay)} recorded "
                      f"choices; {left} were never asked for (the recorded run scheduled "
                      f"more work)", "end of the run")
