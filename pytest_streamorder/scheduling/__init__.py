"""Scheduling for the virtual device: which queued stream work runs when.

  chooser.py     Chooser: the source of every decision, recorded for replay
  policies.py    one class per policy (eager, lazy, random, pct, delay)
  queues.py      work items, event marks, a stream's FIFO and clock
  scheduler.py   Scheduler: runs the queues under a policy; virtual time, the timeline
  written.py     Schedule and its written form (the replay token, '@file')

Torch-free, and independent of sim/ and gpu/: the plugin reads replay tokens with it
before any backend is loaded.
"""

from .chooser import Chooser, ScheduleDiverged
from .policies import POLICIES, Policy, make_policy
from .queues import DEFAULT_OP_NS, EventMark, Item, StreamQueue
from .scheduler import LAUNCH_NS, Scheduler
from .written import MAX_INLINE, ReplayTokenError, Schedule, parse_replay

__all__ = ["Chooser", "ScheduleDiverged", "POLICIES", "Policy", "make_policy",
           "DEFAULT_OP_NS", "LAUNCH_NS", "EventMark", "Item", "Scheduler", "StreamQueue",
           "MAX_INLINE", "ReplayTokenError", "Schedule", "parse_replay"]
