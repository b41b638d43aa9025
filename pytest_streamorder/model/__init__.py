"""The torch-free core: vector clocks, CUDA's ordering rules, and the race detector."""

from .hb import READ, WRITE, Access, Agent, Allocation, Event, HappensBefore, Race
from .site import UNKNOWN_SITE, Site

__all__ = [
    "READ", "WRITE", "Access", "Agent", "Allocation", "Event", "HappensBefore", "Race",
    "Site", "UNKNOWN_SITE",
]
