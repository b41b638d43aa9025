"""Moved to pytest_streamorder.scheduling; kept so old imports still work."""

from ..scheduling.chooser import Chooser, ScheduleDiverged  # noqa: F401
from ..scheduling.policies import POLICIES  # noqa: F401
from ..scheduling.scheduler import (DEFAULT_OP_NS, LAUNCH_NS, EventMark, Item,  # noqa: F401
                                    Scheduler, StreamQueue)
