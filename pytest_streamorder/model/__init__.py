"""The torch-free core: CUDA's ordering rules as a happens-before model, and the race
detector on it. It imports nothing of pytest-streamorder outside this folder.

    clock.py    vector clocks (what each agent knows of the others)
    site.py     where an access came from: a cheap stack capture
    regions.py  exact sets of bytes: spans, strided boxes, explicit runs
    objects.py  streams, events, allocations and accesses, as plain records
    report.py   a Race, and its report in words
    hb.py       HappensBefore: one method per CUDA ordering rule, and the race check

The few race-detection words the code uses, said once:

  agent           the host thread or one CUDA stream: anything that issues or runs work
                  in order. The host is agent 0; each stream gets the next number.
  happens-before  A happens before B when CUDA's rules guarantee A finished before B
                  starts: FIFO on one stream, a launch after the host's earlier work, an
                  event record then a wait on it, a host sync. Two accesses to the same
                  bytes, one of them a write, with no happens-before either way, race.
  vector clock    per agent, one counter per agent: clock[i] = how many of agent i's
                  steps this agent is ordered after. Waits and syncs merge clocks
                  (element-wise max); that is how an edge is recorded.
  epoch           one step of one agent, written (agent, count). An access made at epoch
                  (i, c) happened before a point whose clock has clock[i] >= c.
  shadow          per allocation, the recent accesses a later access may still race
                  with (each with its agent and epoch); an access is checked against it,
                  then replaces the entries it makes redundant.
"""

from .hb import HappensBefore
from .objects import READ, WRITE, Access, Agent, Allocation, Event, Pending
from .report import Race
from .site import UNKNOWN_SITE, Site

__all__ = [
    "READ", "WRITE", "Access", "Agent", "Allocation", "Event", "HappensBefore", "Pending", "Race",
    "Site", "UNKNOWN_SITE",
]
