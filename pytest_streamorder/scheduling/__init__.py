"""Scheduling for the virtual device: which queued stream work runs when.

  chooser.py     Chooser: the source of every decision, recorded for replay
  policies.py    one class per policy (eager, lazy, random, pct, delay)
  scheduler.py   Scheduler: per-stream queues, virtual time, the timeline
  written.py     Schedule and its written form (the replay token, '@file')

Torch-free, and independent of sim/ and gpu/: the plugin reads replay tokens with it
before any backend is loaded.
"""

from .chooser import Chooser, ScheduleDiverged
from .policies import POLICIES, Policy, make_policy
from .scheduler import DEFAULT_OP_NS, LAUNCH_NS, EventMark, Item, Scheduler, StreamQueue
from .written import MAX_INLINE, ReplayTokenError, Schedule, parse_replay

__all__ = ["Chooser", "ScheduleDiverged", "POLICIES", "Policy", "make_policy",
           "DEFAULT_OP_NS", "LAUNCH_NS", "EventMark", "Item", "Scheduler", "StreamQueue",
           "MAX_INLINE", "ReplayTokenError", "Schedule", "parse_replay"]
