"""Race-detector throughput on a synthetic overlap-scheduler trace (~108k accesses).

Run: python -m pytest tests/benchmarks/test_detector_throughput.py --benchmark-only
accesses/s lands in the benchmark's extra_info (and --benchmark-json). Nothing asserts a
time; the test does assert the exact races of the trace, so it also checks the detector.

The trace, per step: the host refills a pinned staging buffer (after the previous H2D copy
is done), an H2D stream copies it into input_ids, forward runs embed + LAYERS layers over a
paged KV cache and publishes new sequence lengths (index_put_ into a slot buffer, record
publish_ready), the schedule stream gathers them, samples from the logits and prepares the
next positions behind a read-done WAR barrier, a D2H stream copies the slot buffer into
pinned memory, and the host syncs D2H and reads it. Every BROKEN_EVERY-th step the D2H copy
is not gated on publish_ready: exactly one race per such step.
"""

from __future__ import annotations

import random

from pytest_streamorder.model import READ, WRITE, HappensBefore

STEPS = 1000
LAYERS = 16
PAGES, PAGE = 8, 1024  # paged KV cache
SLOTS, BATCH, SLOT = 16, 8, 8  # request slots, requests per step, bytes per int64 slot
BROKEN_EVERY = 100
TOKENS = 256  # bytes of input_ids / positions

ALLOCS = {  # name: (nbytes, space)
    "staging": (TOKENS, "host"),
    "input_ids": (TOKENS, "device"),
    "positions": (TOKENS, "device"),
    "kv_cache": (PAGES * PAGE, "device"),
    "hidden_logits": (4096, "device"),
    "new_seq_lens_buf": (SLOTS * SLOT, "device"),
    "seq_lens": (BATCH * SLOT, "device"),
    "seq_lens_cpu": (SLOTS * SLOT, "host"),
}
STREAMS = ("h2d", "forward", "schedule", "d2h")
EVENTS = ("h2d_done", "fwd_read_done", "publish_ready", "gather_done")


def overlap_trace(steps: int = STEPS, seed: int = 0) -> list[tuple]:
    """The trace as symbolic calls: (method, args) with streams, events and allocations
    by name; `bind` resolves them against one HappensBefore."""
    rng = random.Random(seed)
    t = []

    def launch(stream, op, *accesses):
        t.append(("launch", (stream, op, accesses)))

    for n in range(steps):
        # host: refill staging once the previous H2D copy has consumed it
        t.append(("sync_event", ("h2d_done",)))
        t.append(("host_access", ("fill staging", (("staging", 0, TOKENS, WRITE),))))
        # h2d: overwrite input_ids once forward n-1 has read them
        t.append(("wait", ("h2d", "fwd_read_done")))
        launch("h2d", "copy_ H2D", ("staging", 0, TOKENS, READ), ("input_ids", 0, TOKENS, WRITE))
        t.append(("record", ("h2d_done", "h2d")))
        # forward
        t.append(("wait", ("forward", "h2d_done")))
        t.append(("wait", ("forward", "gather_done")))
        launch("forward", "embedding", ("input_ids", 0, TOKENS, READ),
               ("positions", 0, TOKENS, READ), ("hidden_logits", 0, 4096, WRITE))
        t.append(("record", ("fwd_read_done", "forward")))
        for _ in range(LAYERS):
            a, b, w = rng.randrange(PAGES), rng.randrange(PAGES), rng.randrange(PAGES)
            launch("forward", "attention",
                   ("kv_cache", a * PAGE, (a + 1) * PAGE, READ),
                   ("kv_cache", b * PAGE, (b + 1) * PAGE, READ),
                   ("kv_cache", w * PAGE, (w + 1) * PAGE, WRITE),
                   ("hidden_logits", 0, 4096, READ), ("hidden_logits", 0, 4096, WRITE))
        batch = rng.sample(range(SLOTS), BATCH)
        launch("forward", "index_put_",
               *(("new_seq_lens_buf", i * SLOT, (i + 1) * SLOT, WRITE) for i in batch))
        t.append(("record", ("publish_ready", "forward")))
        # schedule: gather the published lengths, sample, prepare positions of step n+1
        t.append(("wait", ("schedule", "publish_ready")))
        launch("schedule", "index_select",
               *(("new_seq_lens_buf", i * SLOT, (i + 1) * SLOT, READ) for i in batch),
               ("seq_lens", 0, BATCH * SLOT, WRITE))
        launch("schedule", "sample", ("hidden_logits", 0, 2048, READ))
        t.append(("wait", ("schedule", "fwd_read_done")))
        launch("schedule", "prepare positions", ("positions", 0, TOKENS, WRITE))
        t.append(("record", ("gather_done", "schedule")))
        # d2h: copy the whole slot buffer, gated on publish_ready (except when broken)
        if n % BROKEN_EVERY != BROKEN_EVERY - 1:
            t.append(("wait", ("d2h", "publish_ready")))
        launch("d2h", "copy_ D2H", ("new_seq_lens_buf", 0, SLOTS * SLOT, READ),
               ("seq_lens_cpu", 0, SLOTS * SLOT, WRITE))
        # host: resolve
        t.append(("sync_stream", ("d2h",)))
        t.append(("host_access", ("seq_lens_cpu.tolist", (("seq_lens_cpu", 0, SLOTS * SLOT,
                                                            READ),))))
    return t


def bind(trace: list[tuple]):
    """A fresh model, and the trace as (bound method, args) ready to replay."""
    hb = HappensBefore(max_races=10**6)
    streams = {name: hb.new_stream(name) for name in STREAMS}
    events = {name: hb.new_event(name) for name in EVENTS}
    allocs = {name: hb.allocate(nbytes, name, space=space, address=0x1000 * (i + 1))
              for i, (name, (nbytes, space)) in enumerate(ALLOCS.items())}
    names = {**streams, **events}
    calls = []
    for method, args in trace:
        if method == "launch":
            stream, op, accesses = args
            args = (streams[stream], op, [(allocs[a], lo, hi, w) for a, lo, hi, w in accesses])
        elif method == "host_access":
            op, accesses = args
            args = (op, [(allocs[a], lo, hi, w) for a, lo, hi, w in accesses])
        else:
            args = tuple(names[a] for a in args)
        calls.append((getattr(hb, method), args))
    return hb, calls


def replay(hb, calls):
    for method, args in calls:
        method(*args)
    return hb


ACCESSES_PER_STEP = 1 + 2 + 3 + LAYERS * 5 + BATCH + (BATCH + 1) + 1 + 1 + 2 + 1


def test_detector_throughput(benchmark):
    trace = overlap_trace()
    hb = benchmark.pedantic(replay, setup=lambda: (bind(trace), {}), rounds=5,
                            warmup_rounds=1)
    assert hb.accesses == STEPS * ACCESSES_PER_STEP  # 108,000
    # Exactly one race per broken step: the ungated D2H copy against that step's publish.
    broken = STEPS // BROKEN_EVERY
    assert len(hb.races) == broken and hb.races_dropped == 0
    assert {(r.earlier.op, r.earlier.agent.name, r.later.op, r.later.agent.name)
            for r in hb.races} == {("index_put_", "forward", "copy_ D2H", "d2h")}
    assert all(r.alloc.label == "new_seq_lens_buf" for r in hb.races)
    if benchmark.stats is not None:  # None under --benchmark-disable
        best, mean = benchmark.stats.stats.min, benchmark.stats.stats.mean
        benchmark.extra_info["accesses"] = hb.accesses
        benchmark.extra_info["accesses_per_s_best"] = round(hb.accesses / best)
        benchmark.extra_info["accesses_per_s_mean"] = round(hb.accesses / mean)


def test_races_of_the_broken_steps_are_found_where_expected():
    """Short version of the benchmark trace, checked race by race."""
    hb, calls = bind(overlap_trace(steps=2 * BROKEN_EVERY))
    replay(hb, calls)
    # the d2h copy is the last-but-one launch of a step; its read is checked first
    copy_seqs = [r.later.seq for r in hb.races]
    assert copy_seqs == [ACCESSES_PER_STEP * (k * BROKEN_EVERY + BROKEN_EVERY) - 2
                         for k in range(2)]
