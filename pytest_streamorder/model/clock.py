"""Vector clocks over agents (the host and each stream), as plain lists of ints.

Entry i counts the events of agent i that are known to have happened before. Lists
grow as agents are created; a missing entry is 0. An event of agent i with own count
c ("epoch" (i, c)) happened before a point with clock V exactly when c <= V[i].
"""

from __future__ import annotations

VectorClock = list  # list[int], indexed by agent id


def join_into(dst: VectorClock, src: VectorClock) -> None:
    """dst := elementwise max(dst, src)."""
    if len(dst) < len(src):
        dst.extend([0] * (len(src) - len(dst)))
    for i, c in enumerate(src):
        if c > dst[i]:
            dst[i] = c


def knows(clock: VectorClock, agent_id: int, count: int) -> bool:
    """Whether the epoch (agent_id, count) happened before a point with this clock."""
    return count <= (clock[agent_id] if agent_id < len(clock) else 0)


def entry(clock: VectorClock, agent_id: int) -> int:
    return clock[agent_id] if agent_id < len(clock) else 0
