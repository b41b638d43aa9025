"""Where and how long to stall a stream: BUGGIFY-style delay sites, seeded and replayable.

A *site* is a place in the user's code that issues device work: (file, line, what), e.g.
("serve.py", 88, "aten.index_put_") or ("serve.py", 90, "event.record"). For one run
(one seed) each site is switched on with probability `site_probability`, decided by a
stable hash of (seed, site), so a site's fate does not depend on what ran before it.
Every visit of a switched-on site then fires with probability `fire_probability`,
drawn from a generator seeded by the seed, and a firing site stalls its stream for a
delay drawn from `delay_ms` (FoundationDB's BUGGIFY). Same seed, same program: same
sites, same visits fired, same delays.

Torch-free: the backend turns a decision into `torch.cuda._sleep(cycles)`.
"""

from __future__ import annotations

import random
import zlib

DEFAULT_SITE_PROBABILITY = 0.5
DEFAULT_FIRE_PROBABILITY = 0.5
DEFAULT_DELAY_MS = (0.25, 2.0)


class DelayPlan:
    """The delay decisions of one run."""

    def __init__(self, seed: int | None, site_probability: float = DEFAULT_SITE_PROBABILITY,
                 fire_probability: float = DEFAULT_FIRE_PROBABILITY,
                 delay_ms: tuple[float, float] | float = DEFAULT_DELAY_MS):
        for label, p in (("delay_probability", site_probability),
                         ("fire_probability", fire_probability)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{label} must be in [0, 1], got {p!r}")
        if isinstance(delay_ms, (int, float)):
            delay_ms = (float(delay_ms), float(delay_ms))
        lo, hi = delay_ms
        if not 0 <= lo <= hi:
            raise ValueError(f"delay_ms must be (low, high) with 0 <= low <= high, got {delay_ms!r}")
        self.seed = 0 if seed is None else int(seed)
        self.site_probability = float(site_probability)
        self.fire_probability = float(fire_probability)
        self.delay_ms = (float(lo), float(hi))
        self._rng = random.Random(f"streamorder-delay:{self.seed}")
        self._sites: dict[tuple, bool] = {}
        self.visits = 0  # visits of switched-on sites
        self.fired: list[tuple[tuple, float]] = []  # (site, ms) per firing, in order

    @property
    def enabled(self) -> bool:
        return self.site_probability > 0 and self.fire_probability > 0 and self.delay_ms[1] > 0

    def site_on(self, site: tuple) -> bool:
        """Whether this site is switched on for this seed (a stable hash, not the RNG)."""
        on = self._sites.get(site)
        if on is None:
            text = f"{self.seed}\0" + "\0".join(str(part) for part in site)
            on = zlib.crc32(text.encode()) / 2**32 < self.site_probability
            self._sites[site] = on
        return on

    def decide(self, site: tuple) -> float:
        """Milliseconds to stall before this visit of `site` (0.0: none)."""
        if not self.site_on(site):
            return 0.0
        self.visits += 1
        if self._rng.random() >= self.fire_probability:
            return 0.0
        lo, hi = self.delay_ms
        ms = lo if hi == lo else self._rng.uniform(lo, hi)
        self.fired.append((site, ms))
        return ms

    def sites_on(self) -> list[tuple]:
        """The sites seen so far that are switched on in this run."""
        return [site for site, on in self._sites.items() if on]
