"""A race, and its report in words: both accesses, the memory, and the edge that is missing.

The detector (hb.py) creates `Race`s; this module only reads them, so it needs nothing
from hb.py (the model's modules import in one direction: clock, site -> objects ->
report -> hb).
"""

from __future__ import annotations

from .objects import Access, Allocation
from .regions import describe

STACK_LINES = 6


class Race:
    """Two conflicting accesses with no happens-before edge between them.

    str(race) is the full report (`format_race`); `race.explain()` its last line, the
    missing edge in words (`missing_edge`)."""

    __slots__ = ("earlier", "later", "alloc", "facts", "found_at", "found_when")

    def __init__(self, earlier: Access, later: Access, alloc: Allocation, facts: tuple):
        self.earlier = earlier
        self.later = later
        self.alloc = alloc  # the allocation the later access touched
        self.facts = facts  # what the explanation needs, snapshotted when found
        # For a race found when an indexed op ran (its set known only then): the call
        # that reported it (a later launch, host access or sync). None: found at issue.
        self.found_at = None
        self.found_when = ""  # then: when its set became known (Pending.found_when)

    def explain(self) -> str:
        return missing_edge(self)

    def __str__(self) -> str:
        return format_race(self)

    def key(self) -> tuple:
        """Same pair of source lines and kinds: the same bug, seen again."""
        return (self.earlier.site.key(), self.earlier.is_write,
                self.later.site.key(), self.later.is_write)


def missing_edge(race: Race) -> str:
    """One or two sentences a CUDA programmer can act on."""
    first, second = race.earlier, race.later
    src, dst = first.agent, second.agent
    what = f"the {first.kind} by {first.op} (op #{first.count} on '{src.name}')" \
        if not src.is_host else f"the host's {first.kind}"

    if first.alloc is not race.alloc:
        return (
            f"{first.alloc.label} was freed at {first.alloc.free_site.location()} while "
            f"{src.describe()} could still {_verb(first)} it, and the caching allocator "
            f"handed the block to {race.alloc.label} at once. Call "
            f"tensor.record_stream(<'{src.name}' stream>) before dropping the tensor, or "
            f"keep it alive until '{src.name}' is synchronized.")

    if dst.is_host:
        if not first.is_write and second.is_write:
            return (
                f"the host overwrote memory that {first.op} on '{src.name}' (op "
                f"#{first.count}) may not have read yet, e.g. a pinned staging buffer of a "
                f"non_blocking copy. Synchronize '{src.name}' (or an event recorded after the "
                f"copy) before writing the buffer again.")
        return (
            f"the host {_verbed(second)} this before synchronizing with '{src.name}' after "
            f"{what}. Call synchronize() on '{src.name}' or on an event recorded after it, "
            f"or poll query() until it returns True, before touching the memory.")

    if src.is_host:
        return (f"{dst.describe()} was handed this work before the host's {first.kind}; "
                f"issue the host access before launching, or synchronize first.")

    hint = _wait_hint(race)
    base = (f"{dst.describe()} {_verbed(second)} this before waiting for any event "
            f"recorded on '{src.name}' after {what}.")
    return f"{base} {hint}" if hint else base


def _wait_hint(race: Race) -> str:
    """Why the waits the later stream did issue did not order it after the earlier access."""
    first = race.earlier
    src = first.agent
    for note, recorded_on in reversed(race.facts):
        event = note.event
        if note.recorded_on is src and note.captured_count < first.count:
            return (f"It waited on event '{event.name}', but that event was recorded on "
                    f"'{src.name}' at op #{note.captured_count}, before the {first.kind} "
                    f"(record the event after the access it must fence).")
        if note.recorded_on is None and src in recorded_on:
            return (f"It waited on event '{event.name}' before the event was ever recorded; "
                    f"waiting on a never-recorded event is a no-op (issue the wait after the "
                    f"record).")
        if note.recorded_on is not None and note.recorded_on is not src \
                and src in recorded_on:
            return (f"It waited on event '{event.name}', but at that time the event had been "
                    f"re-recorded on '{note.recorded_on.name}'; re-recording replaces the "
                    f"capture, so the fence on '{src.name}' was gone (use one event per "
                    f"stream, or wait before re-recording).")
    return ""


def _verb(acc: Access) -> str:
    return "write" if acc.is_write else "read"


def _verbed(acc: Access) -> str:
    return "wrote" if acc.is_write else "read"


def _access_block(title: str, acc: Access) -> list[str]:
    who = acc.agent.describe()
    lines = [f"  {title}: {acc.kind} by {who} in {acc.op}, "
             f"{describe(acc.start, acc.stop, acc.region)}"]
    stack = acc.site.user_lines()
    for i, frame in enumerate(stack[:STACK_LINES]):
        lines.append(f"      {'at' if i == 0 else '  '} {frame}")
    return lines


def format_race(race: Race) -> str:
    first, second = race.earlier, race.later
    alloc = race.alloc
    lines = [
        f"stream-order race on {alloc.label}: {second.kind} by {second.agent.describe()} "
        f"is unordered with an earlier {first.kind} by {first.agent.describe()}",
        f"  memory: {alloc.describe()}, allocated at {alloc.site.location()}",
    ]
    if first.alloc is not alloc:
        lines.append(f"  reused block of: {first.alloc.describe()}, allocated at "
                     f"{first.alloc.site.location()}, freed at {first.alloc.free_site.location()}")
    lines += _access_block("earlier", first)
    lines += _access_block("later", second)
    if race.found_at is not None:
        lines.append(f"  found: when {race.found_when}; reported at {race.found_at.location()}")
    lines.append(f"  missing edge: {missing_edge(race)}")
    return "\n".join(lines)
