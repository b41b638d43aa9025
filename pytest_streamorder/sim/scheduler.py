"""Moved to pytest_streamorder.scheduling; kept so old imports still work."""

from ..scheduling import (DEFAULT_OP_NS, LAUNCH_NS, POLICIES, Chooser,  # noqa: F401
                          EventMark, Item, ScheduleDiverged, Scheduler, StreamQueue)
