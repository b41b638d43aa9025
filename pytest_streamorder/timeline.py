"""Timelines of one virtual-device schedule: a Chrome/Perfetto trace JSON and a
self-contained HTML page (no network), with the racing accesses marked.

Times are the virtual device's: each op costs a nominal 2 µs, torch.cuda._sleep its
cycles, and the host blocks in syncs until the work it waits for is done.
"""

from __future__ import annotations

import html
import json
import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sim.device import VirtualDevice

HOST_TID = 0
RACE_COLOR = "#d62728"


def _slices(vd: "VirtualDevice"):
    """(tid, name, start_ns, end_ns, is_racy, item, note) for every executed item and host
    wait. A run stopped by a race (raise_on_race) also left work queued that never ran,
    and the launch whose access raced was refused: both are drawn after what ran, with
    a note, so that the trace of the failing run itself shows both sides of the race."""
    racy = set()
    for race in vd.races:
        for acc in (race.earlier, race.later):
            if not acc.agent.is_host:
                racy.add((acc.agent.name, acc.count))
    out = []
    for entry in vd.scheduler.timeline or ():
        if entry[0] == "item":
            _, stream, item, start = entry
            key = (stream.name, item.op_count)
            out.append((stream.index + 1, item.label, start, item.finish_ns,
                        item.op_count > 0 and key in racy, item, ""))
        else:
            _, label, start, end = entry
            out.append((HOST_TID, label, start, end, False, None, ""))
    shown = {(s.name, item.op_count) for s in vd.scheduler.streams for item in s.queue}
    shown |= {(entry[1].name, entry[2].op_count) for entry in vd.scheduler.timeline or ()
              if entry[0] == "item"}
    for stream in vd.scheduler.streams:
        start = stream.time_ns
        for item in stream.queue:  # queued when the run stopped: it never ran
            start = max(start, item.issued_ns)
            out.append((stream.index + 1, item.label, start, start + item.cost_ns,
                        item.op_count > 0 and (stream.name, item.op_count) in racy, item,
                        "queued, never ran: the run stopped at a race"))
            start += item.cost_ns
    by_name = {s.name: s for s in vd.scheduler.streams}
    for race, when in zip(vd.races, vd.race_times_ns):
        later = race.later
        stream = by_name.get(later.agent.name)
        if stream is not None and (stream.name, later.count) not in shown:
            shown.add((stream.name, later.count))
            out.append((stream.index + 1, later.op, when, when + 1, True, None,
                        "launched here, never queued: the race was found at its launch"))
    return out


def chrome_trace(vd: "VirtualDevice") -> dict:
    """The schedule as Chrome trace events (load in ui.perfetto.dev or chrome://tracing)."""
    events = [{"ph": "M", "name": "thread_name", "pid": 1, "tid": HOST_TID, "args": {"name": "host"}}]
    for stream in vd.scheduler.streams:
        events.append({"ph": "M", "name": "thread_name", "pid": 1, "tid": stream.index + 1,
                       "args": {"name": f"stream '{stream.name}'"}})
    marks = {}  # id(EventMark) -> (tid, time of the record)
    for tid, name, start, end, racy, item, note in _slices(vd):
        event = {"ph": "X", "name": name, "pid": 1, "tid": tid, "ts": start / 1000,
                 "dur": max(end - start, 1) / 1000, "args": {"note": note} if note else {}}
        if racy:
            event["cname"] = "terrible"
            event["args"]["race"] = "this op is one side of a reported race"
        events.append(event)
        if item is not None and item.done_mark is not None:
            marks[id(item.done_mark)] = (tid, start)
        if item is not None and item.blocked_on is not None and id(item.blocked_on) in marks:
            src_tid, src_ts = marks[id(item.blocked_on)]
            flow = len(events)
            events.append({"ph": "s", "id": flow, "name": "event", "cat": "wait", "pid": 1,
                           "tid": src_tid, "ts": src_ts / 1000})
            events.append({"ph": "f", "bp": "e", "id": flow, "name": "event", "cat": "wait",
                           "pid": 1, "tid": tid, "ts": start / 1000})
    for race, when in zip(vd.races, vd.race_times_ns):
        events.append({"ph": "i", "s": "g", "name": "race", "pid": 1, "tid": HOST_TID,
                       "ts": when / 1000, "args": {"report": str(race)}})
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"policy": vd.policy, "seed": vd.seed}}


def timeline_html(vd: "VirtualDevice", title: str) -> str:
    """One page, no scripts from anywhere: a row per stream and one for the host."""
    slices = _slices(vd)
    tracks = ["host"] + [f"stream '{s.name}'" for s in vd.scheduler.streams]
    end = max([e for _, _, _, e, _, _, _ in slices] + vd.race_times_ns + [1])
    width, left, row = 1100, 190, 34
    scale = (width - left - 20) / end
    height = row * len(tracks) + 60
    parts = [f'<svg width="{width}" height="{height}" '
             f'font-family="monospace" font-size="11">']
    for i, name in enumerate(tracks):
        y = 30 + i * row
        parts.append(f'<rect x="0" y="{y}" width="{width}" height="{row - 4}" fill="{"#f4f4f4" if i % 2 else "#fbfbfb"}"/>')
        parts.append(f'<text x="6" y="{y + row / 2 + 2}">{html.escape(name)}</text>')
    marks = {}
    arrows = []
    for tid, name, start, stop, racy, item, note in slices:
        x, w = left + start * scale, max((stop - start) * scale, 2)
        y = 30 + tid * row + 3
        fill = RACE_COLOR if racy else ("#9ecae1" if tid else "#fdae6b")
        label = html.escape(name)
        dash = ' stroke-dasharray="3,2"' if note else ""  # not run: drawn dashed
        parts.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 10}" fill="{fill}" '
                     f'stroke="#555" stroke-width="0.5"{dash}><title>{label} [{start / 1000:.1f}-'
                     f'{stop / 1000:.1f} us]{html.escape(": " + note) if note else ""}</title></rect>')
        if w > 7 * len(name):
            parts.append(f'<text x="{x + 3:.1f}" y="{y + row / 2}" fill="#111">{label}</text>')
        if item is not None and item.done_mark is not None:
            marks[id(item.done_mark)] = (x, y)
        if item is not None and item.blocked_on is not None and id(item.blocked_on) in marks:
            sx, sy = marks[id(item.blocked_on)]
            arrows.append(f'<line x1="{sx:.1f}" y1="{sy + 6}" x2="{x:.1f}" y2="{y + 6}" '
                          f'stroke="#31a354" stroke-width="1.2" marker-end="url(#arrow)"/>')
    for when in vd.race_times_ns:
        x = left + when * scale
        parts.append(f'<line x1="{x:.1f}" y1="26" x2="{x:.1f}" y2="{30 + row}" stroke="{RACE_COLOR}" '
                     f'stroke-width="2"><title>race found here</title></line>')
    parts.insert(1, '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="8" refY="4" '
                    'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#31a354"/></marker></defs>')
    parts += arrows
    parts.append(f'<text x="{left}" y="18">0 us</text>'
                 f'<text x="{width - 90}" y="18">{end / 1000:.1f} us</text></svg>')
    reports = "".join(f"<pre class=race>{html.escape(str(r))}</pre>" for r in vd.races) \
        or "<p>No race reported in this schedule.</p>"
    legend = (f'<p><span style="background:{RACE_COLOR};color:white">&nbsp;racing op&nbsp;</span> '
              f'<span style="background:#9ecae1">&nbsp;stream op&nbsp;</span> '
              f'<span style="background:#fdae6b">&nbsp;host blocked in a sync&nbsp;</span> '
              f'<span style="color:#31a354">&#8594; event record to wait</span> '
              f'<span style="color:{RACE_COLOR}">| race found (host time)</span></p>')
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>body{{font-family:sans-serif;margin:16px}}pre.race{{background:#fff4f4;"
            f"border-left:4px solid {RACE_COLOR};padding:8px;white-space:pre-wrap}}</style></head>"
            f"<body><h2>{html.escape(title)}</h2><p>policy {html.escape(vd.policy)}, seed "
            f"{vd.seed}, {vd.ops_issued} device ops, virtual time</p>{legend}"
            f"{''.join(parts)}<h3>Races</h3>{reports}</body></html>")


def write_trace_files(vd: "VirtualDevice", directory: str, name: str) -> tuple[str, str]:
    """Write NAME.trace.json and NAME.html into directory; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    stem = re.sub(r"[^\w.-]+", "_", name).strip("_") or "schedule"
    json_path = os.path.join(directory, stem + ".trace.json")
    html_path = os.path.join(directory, stem + ".html")
    with open(json_path, "w") as f:
        json.dump(chrome_trace(vd), f)
    with open(html_path, "w") as f:
        f.write(timeline_html(vd, name))
    return json_path, html_path
