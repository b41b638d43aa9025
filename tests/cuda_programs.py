"""Small plain torch.cuda programs: one per bug class of DESIGN.md, and correct twins.

Every program is a function of no arguments that runs unchanged on a real GPU and on the
virtual device, and returns `(observed, expected)`: the values the program saw (Python
lists of ints) and the values a correct run must produce. A bug program's missing edge
lets one stream run late; when it does (a `lazy` or `delay` schedule on the virtual
device, or `set_delay(...)` on a GPU, which puts `torch.cuda._sleep` before the racing
writer or reader), `observed != expected`. A twin returns `expected` under every legal
schedule.

Conventions. Inputs are made on the default stream, then `torch.cuda.synchronize()`, so
the racing part starts from a clean slate and every race is the one the program is
about. Every program ends with `torch.cuda.synchronize()` so that no work of one program
is still queued when the next starts (on a GPU its freed blocks would be reused). All
values are int64, so poison (-1 on the virtual device) compares cleanly.

Imports only torch.
"""

from __future__ import annotations

import torch

N = 8  # slots in every buffer
DELAY_CYCLES = 0  # torch.cuda._sleep cycles injected where a late stream shows a bug


def set_delay(cycles: int) -> None:
    """Inject `torch.cuda._sleep(cycles)` at each program's delay site (0: none)."""
    global DELAY_CYCLES
    DELAY_CYCLES = int(cycles)


def _delay() -> None:
    """Occupy the current stream for a while, so that work behind it runs late."""
    if DELAY_CYCLES > 0:
        torch.cuda._sleep(DELAY_CYCLES)


def _dev(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64, device="cuda")


def _zeros() -> torch.Tensor:
    return torch.zeros(N, dtype=torch.int64, device="cuda")


def _pinned() -> torch.Tensor:
    return torch.zeros(N, dtype=torch.int64, pin_memory=True)


SLOTS = [1, 3, 5]
LENS = [11, 33, 55]
PUBLISHED = [0, 11, 0, 33, 0, 55, 0, 0]  # the buffer after publishing LENS into SLOTS


def _setup():
    """The FutureMap's pieces: device buffer (zeros), pinned mirror, slots, lengths."""
    buf, pinned = _zeros(), _pinned()
    slots, lens = _dev(SLOTS), _dev(LENS)
    torch.cuda.synchronize()
    return buf, pinned, slots, lens


# ======================================================================================
# Bug classes
# ======================================================================================

def d2h_not_gated() -> tuple[list, list]:
    """The private D2H stream copies the buffer without waiting `publish_ready`."""
    buf, pinned, slots, lens = _setup()
    forward = torch.cuda.Stream()
    d2h = torch.cuda.Stream()
    with torch.cuda.stream(forward):
        _delay()
        buf[slots] = lens  # publish
        publish_ready = torch.cuda.Event()
        publish_ready.record()
    # BUG: missing d2h.wait_event(publish_ready)
    with torch.cuda.stream(d2h):
        pinned.copy_(buf, non_blocking=True)
    d2h.synchronize()
    observed = pinned.tolist()
    torch.cuda.synchronize()
    return observed, PUBLISHED


def host_reads_pinned_before_sync() -> tuple[list, list]:
    """The host reads the pinned buffer before syncing the D2H stream."""
    buf, pinned, slots, lens = _setup()
    forward = torch.cuda.Stream()
    d2h = torch.cuda.Stream()
    with torch.cuda.stream(forward):
        buf[slots] = lens
        publish_ready = torch.cuda.Event()
        publish_ready.record()
    d2h.wait_event(publish_ready)
    with torch.cuda.stream(d2h):
        _delay()
        pinned.copy_(buf, non_blocking=True)
    # BUG: missing d2h.synchronize()
    observed = pinned.tolist()
    torch.cuda.synchronize()
    return observed, PUBLISHED


def gather_without_publish_wait() -> tuple[list, list]:
    """The schedule stream gathers `buf[slots]` without waiting `publish_ready`."""
    buf, pinned, slots, lens = _setup()
    forward = torch.cuda.Stream()
    schedule = torch.cuda.Stream()
    with torch.cuda.stream(forward):
        _delay()
        buf[slots] = lens
        publish_ready = torch.cuda.Event()
        publish_ready.record()
    with torch.cuda.stream(schedule):
        # BUG: missing publish_ready.wait()
        seq_lens = buf[slots]
        observed = seq_lens.tolist()  # syncs the schedule stream only
    torch.cuda.synchronize()
    return observed, LENS


def event_recorded_before_write() -> tuple[list, list]:
    """`publish_ready` is recorded before the write it should fence."""
    buf, pinned, slots, lens = _setup()
    forward = torch.cuda.Stream()
    d2h = torch.cuda.Stream()
    publish_ready = torch.cuda.Event()
    with torch.cuda.stream(forward):
        publish_ready.record()  # BUG: before the write
        _delay()
        buf[slots] = lens
    d2h.wait_event(publish_ready)
    with torch.cuda.stream(d2h):
        pinned.copy_(buf, non_blocking=True)
    d2h.synchronize()
    observed = pinned.tolist()
    torch.cuda.synchronize()
    return observed, PUBLISHED


def event_rerecorded_other_stream() -> tuple[list, list]:
    """`publish_ready` is re-recorded on the draft stream before resolve waits on it:
    the fence on the forward stream's write is gone (SGLang #30435)."""
    buf, pinned, slots, lens = _setup()
    draft_buf = _zeros()
    torch.cuda.synchronize()
    forward = torch.cuda.Stream()
    draft = torch.cuda.Stream()
    d2h = torch.cuda.Stream()
    publish_ready = torch.cuda.Event()
    with torch.cuda.stream(forward):
        _delay()
        buf[slots] = lens
        publish_ready.record()
    with torch.cuda.stream(draft):
        draft_buf.fill_(7)
        publish_ready.record()  # BUG: replaces the capture on forward
    d2h.wait_event(publish_ready)
    with torch.cuda.stream(d2h):
        pinned.copy_(buf, non_blocking=True)
    d2h.synchronize()
    observed = pinned.tolist()
    torch.cuda.synchronize()
    return observed, PUBLISHED


def wait_before_record() -> tuple[list, list]:
    """The D2H stream waits on `publish_ready` before it was ever recorded: a no-op."""
    buf, pinned, slots, lens = _setup()
    forward = torch.cuda.Stream()
    d2h = torch.cuda.Stream()
    publish_ready = torch.cuda.Event()
    d2h.wait_event(publish_ready)  # BUG: issued before the record below
    with torch.cuda.stream(forward):
        _delay()
        buf[slots] = lens
        publish_ready.record()
    with torch.cuda.stream(d2h):
        pinned.copy_(buf, non_blocking=True)
    d2h.synchronize()
    observed = pinned.tolist()
    torch.cuda.synchronize()
    return observed, PUBLISHED


def missing_war_barrier() -> tuple[list, list]:
    """The schedule stream rewrites the input slots for batch n+1 while forward n may
    still read them: no WAR barrier (SGLang #26380, #18744)."""
    inputs = _dev([1, 2, 3, 4, 5, 6, 7, 8])
    next_inputs = _dev([100] * N)
    torch.cuda.synchronize()
    forward = torch.cuda.Stream()
    schedule = torch.cuda.Stream()
    with torch.cuda.stream(forward):
        _delay()
        out = inputs * 10  # forward n reads its inputs
    with torch.cuda.stream(schedule):
        # BUG: missing schedule.wait_event(read_done) (or wait_stream(forward))
        inputs.copy_(next_inputs)  # batch n+1
    schedule.synchronize()
    forward.synchronize()
    observed = out.tolist()
    torch.cuda.synchronize()
    return observed, [10, 20, 30, 40, 50, 60, 70, 80]


def freed_without_record_stream() -> tuple[list, list]:
    """A temporary made on the default stream is used on a side stream and dropped
    without record_stream: the allocator hands its block to the next allocation on the
    default stream at once (SGLang #34076)."""
    src = _dev([1, 2, 3, 4, 5, 6, 7, 8])
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    tmp = src * 2  # on the default stream
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _delay()
        out = tmp + 0  # reads tmp on the side stream
    # BUG: missing tmp.record_stream(side)
    del tmp
    scratch = torch.empty(N, dtype=torch.int64, device="cuda")  # reuses tmp's block
    scratch.fill_(-7)
    torch.cuda.current_stream().synchronize()
    side.synchronize()
    observed = out.tolist()
    del scratch
    torch.cuda.synchronize()
    return observed, [2, 4, 6, 8, 10, 12, 14, 16]


def pinned_staging_overwritten() -> tuple[list, list]:
    """The host writes the next batch into a pinned staging buffer before the H2D copy
    of the previous batch ran (vLLM #24527)."""
    staging = torch.zeros(N, dtype=torch.int64, pin_memory=True)
    dst_a, dst_b = _zeros(), _zeros()
    batch_a = torch.arange(1, N + 1, dtype=torch.int64)
    batch_b = torch.arange(101, N + 101, dtype=torch.int64)
    torch.cuda.synchronize()
    h2d = torch.cuda.Stream()
    with torch.cuda.stream(h2d):
        staging.copy_(batch_a)
        _delay()
        dst_a.copy_(staging, non_blocking=True)
        # BUG: missing h2d.synchronize() (or an event after the copy) before reuse
        staging.copy_(batch_b)
        dst_b.copy_(staging, non_blocking=True)
    torch.cuda.synchronize()
    observed = dst_a.tolist() + dst_b.tolist()
    return observed, batch_a.tolist() + batch_b.tolist()


def stale_event_spec_off() -> tuple[list, list]:
    """Step 2 runs with speculation off: the forward writes the buffer again but does
    not re-record `publish_ready`; resolve still waits on it (vLLM #34866)."""
    buf, pinned, slots, lens = _setup()
    lens2 = _dev([12, 34, 56])
    torch.cuda.synchronize()
    forward = torch.cuda.Stream()
    d2h = torch.cuda.Stream()
    publish_ready = torch.cuda.Event()
    observed = []
    for step, spec in ((1, True), (2, False)):
        with torch.cuda.stream(forward):
            if step == 2:
                _delay()
            buf[slots] = lens if step == 1 else lens2
            if spec:  # BUG: step 2 writes but does not record
                publish_ready.record()
        d2h.wait_event(publish_ready)
        with torch.cuda.stream(d2h):
            pinned.copy_(buf, non_blocking=True)
        d2h.synchronize()
        observed += pinned.tolist()
    torch.cuda.synchronize()
    return observed, PUBLISHED + [0, 12, 0, 34, 0, 56, 0, 0]


def default_stream_init_raced() -> tuple[list, list]:
    """A buffer initialised on the default stream is updated on a side stream that
    never waited for the default stream."""
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    _delay()
    counts = torch.full((N,), 5, dtype=torch.int64, device="cuda")  # default stream
    # BUG: missing side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        counts.add_(1)
    side.synchronize()
    observed = counts.tolist()  # default stream, after the host synced `side`
    torch.cuda.synchronize()
    return observed, [6] * N


def offset_view_writes() -> tuple[list, list]:
    """Two streams write overlapping offset views of one buffer (different data_ptrs)
    and the second was meant to win the overlap; nothing orders them."""
    buf = _zeros()
    torch.cuda.synchronize()
    first = torch.cuda.Stream()
    second = torch.cuda.Stream()
    with torch.cuda.stream(first):
        _delay()
        buf[2:6].fill_(1)
    # BUG: missing second.wait_stream(first)
    with torch.cuda.stream(second):
        buf[4:8].fill_(2)
    second.synchronize()
    first.synchronize()
    observed = buf.tolist()
    torch.cuda.synchronize()
    return observed, [0, 0, 1, 1, 2, 2, 2, 2]


def _forward_in_worker(x: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event]:
    """A forward pass in a worker thread on its own stream, as SGLang's older overlap
    scheduler ran it: inference-mode outputs and a done-event come back through a queue."""
    import queue
    import threading

    handoff = queue.Queue()

    def worker():
        stream = torch.cuda.Stream()
        with torch.inference_mode(), torch.cuda.stream(stream):
            _delay()
            out = x * 2 + 1
            done = torch.cuda.Event()
            done.record()
        handoff.put((out, done))

    thread = threading.Thread(target=worker)
    thread.start()
    out, done = handoff.get(timeout=60)
    thread.join()
    return out, done


WORKER_IN = [1, 2, 3, 4, 5, 6, 7, 8]
WORKER_OUT = [2 * v + 1 for v in WORKER_IN]


def worker_output_read_unsynced() -> tuple[list, list]:
    """The scheduler thread copies a worker's output to the host with only the queue's
    host-side handoff: the worker's stream may not have run yet."""
    x = _dev(WORKER_IN)
    torch.cuda.synchronize()
    out, _done = _forward_in_worker(x)
    observed = out.cpu().tolist()  # BUG: missing current_stream().wait_event(done)
    torch.cuda.synchronize()
    return observed, WORKER_OUT


# ======================================================================================
# Correct twins
# ======================================================================================

def same_stream_fifo() -> tuple[list, list]:
    """Write, then read and copy to pinned memory, all on one side stream."""
    buf, pinned, slots, lens = _setup()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        _delay()
        buf[slots] = lens
        doubled = buf * 2
        pinned.copy_(doubled, non_blocking=True)
    s.synchronize()
    observed = pinned.tolist()
    torch.cuda.synchronize()
    return observed, [2 * v for v in PUBLISHED]


def wait_chain_three_streams() -> tuple[list, list]:
    """a writes, b waits a and transforms, c waits b and copies to the host."""
    buf, pinned, slots, lens = _setup()
    a = torch.cuda.Stream()
    b = torch.cuda.Stream()
    c = torch.cuda.Stream()
    a_done = torch.cuda.Event()
    b_done = torch.cuda.Event()
    with torch.cuda.stream(a):
        _delay()
        buf[slots] = lens
        a_done.record()
    b.wait_event(a_done)
    with torch.cuda.stream(b):
        _delay()
        plus_one = buf + 1
        b_done.record()
    c.wait_event(b_done)
    with torch.cuda.stream(c):
        pinned.copy_(plus_one, non_blocking=True)
    c.synchronize()
    observed = pinned.tolist()
    torch.cuda.synchronize()
    return observed, [v + 1 for v in PUBLISHED]


def d2h_gated() -> tuple[list, list]:
    """The correct publish/resolve: the D2H stream waits publish_ready only (not the
    draft-extend work queued after it), the host syncs the D2H stream only. Twin of
    d2h_not_gated and host_reads_pinned_before_sync."""
    buf, pinned, slots, lens = _setup()
    forward = torch.cuda.Stream()
    d2h = torch.cuda.Stream()
    with torch.cuda.stream(forward):
        _delay()
        buf[slots] = lens
        publish_ready = torch.cuda.Event()
        publish_ready.record()
        _delay()
        draft = lens * 3  # draft extend: forward work after the publish
    d2h.wait_event(publish_ready)
    with torch.cuda.stream(d2h):
        pinned.copy_(buf, non_blocking=True)
    d2h.synchronize()
    observed = pinned.tolist()
    torch.cuda.synchronize()
    del draft
    return observed, PUBLISHED


def gather_after_publish_wait() -> tuple[list, list]:
    """Twin of gather_without_publish_wait: the schedule stream waits publish_ready."""
    buf, pinned, slots, lens = _setup()
    forward = torch.cuda.Stream()
    schedule = torch.cuda.Stream()
    with torch.cuda.stream(forward):
        _delay()
        buf[slots] = lens
        publish_ready = torch.cuda.Event()
        publish_ready.record()
    with torch.cuda.stream(schedule):
        publish_ready.wait()
        seq_lens = buf[slots]
        observed = seq_lens.tolist()
    torch.cuda.synchronize()
    return observed, LENS


def event_synchronize() -> tuple[list, list]:
    """D2H into pinned memory on a side stream; the host waits on an event recorded
    after the copy with event.synchronize()."""
    buf, pinned, slots, lens = _setup()
    s = torch.cuda.Stream()
    copied = torch.cuda.Event(blocking=True)
    with torch.cuda.stream(s):
        _delay()
        buf[slots] = lens
        pinned.copy_(buf, non_blocking=True)
        copied.record()
    copied.synchronize()
    observed = pinned.tolist()
    torch.cuda.synchronize()
    return observed, PUBLISHED


def query_polling() -> tuple[list, list]:
    """Like event_synchronize, but the host polls event.query() until it is True."""
    buf, pinned, slots, lens = _setup()
    s = torch.cuda.Stream()
    copied = torch.cuda.Event()
    with torch.cuda.stream(s):
        _delay()
        buf[slots] = lens
        pinned.copy_(buf, non_blocking=True)
        copied.record()
    while not copied.query():
        pass
    observed = pinned.tolist()
    torch.cuda.synchronize()
    return observed, PUBLISHED


def record_stream() -> tuple[list, list]:
    """Twin of freed_without_record_stream: tmp.record_stream(side) before the drop."""
    src = _dev([1, 2, 3, 4, 5, 6, 7, 8])
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    tmp = src * 2
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _delay()
        out = tmp + 0
    tmp.record_stream(side)
    del tmp
    scratch = torch.empty(N, dtype=torch.int64, device="cuda")  # must not reuse tmp's block
    scratch.fill_(-7)
    torch.cuda.current_stream().synchronize()
    side.synchronize()
    observed = out.tolist()
    del scratch
    torch.cuda.synchronize()
    return observed, [2, 4, 6, 8, 10, 12, 14, 16]


def war_barrier_read_done() -> tuple[list, list]:
    """Twin of missing_war_barrier: forward records read_done after reading its
    inputs; the schedule stream waits on it before rewriting them."""
    inputs = _dev([1, 2, 3, 4, 5, 6, 7, 8])
    next_inputs = _dev([100] * N)
    torch.cuda.synchronize()
    forward = torch.cuda.Stream()
    schedule = torch.cuda.Stream()
    read_done = torch.cuda.Event()
    with torch.cuda.stream(forward):
        _delay()
        out = inputs * 10
        read_done.record()
        _delay()
        out.add_(1)  # the rest of forward n: not waited for
    schedule.wait_event(read_done)
    with torch.cuda.stream(schedule):
        inputs.copy_(next_inputs)
    schedule.synchronize()
    forward.synchronize()
    observed = out.tolist() + inputs.tolist()
    torch.cuda.synchronize()
    return observed, [11, 21, 31, 41, 51, 61, 71, 81] + [100] * N


def dp_idle_empty_batches() -> tuple[list, list]:
    """Steps with empty (DP-idle) batches between real ones: the idle step writes
    nothing and records nothing, and resolve still waits on the last capture, which
    fences every write to the buffer. Zero-size gathers and copies touch nothing."""
    buf, pinned, slots, lens = _setup()
    empty = torch.empty(0, dtype=torch.int64, device="cuda")
    torch.cuda.synchronize()
    forward = torch.cuda.Stream()
    schedule = torch.cuda.Stream()
    d2h = torch.cuda.Stream()
    publish_ready = torch.cuda.Event()
    observed = []
    for step_slots, step_lens in ((slots, lens), (empty, empty), (empty, empty)):
        with torch.cuda.stream(forward):
            _delay()
            if step_slots.shape[0] > 0:  # DP idle: nothing to publish, no re-record
                buf[step_slots] = step_lens
                publish_ready.record()
            idle_out = step_lens + 1  # zero-size for idle steps
        with torch.cuda.stream(schedule):
            publish_ready.wait()
            seq_lens = buf[step_slots]
            observed.append(seq_lens.tolist())
        d2h.wait_event(publish_ready)
        with torch.cuda.stream(d2h):
            pinned.copy_(buf, non_blocking=True)
        d2h.synchronize()
        observed.append(pinned.tolist())
        del idle_out
    torch.cuda.synchronize()
    return observed, [LENS, PUBLISHED, [], PUBLISHED, [], PUBLISHED]


def wait_stream() -> tuple[list, list]:
    """Twin of default_stream_init_raced: the side stream waits the default stream."""
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    _delay()
    counts = torch.full((N,), 5, dtype=torch.int64, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        counts.add_(1)
    side.synchronize()
    observed = counts.tolist()
    torch.cuda.synchronize()
    return observed, [6] * N


def blocking_cpu_item() -> tuple[list, list]:
    """.cpu(), .item(), .tolist(), int(), bool() and nonzero on the current (side)
    stream sync that stream, so the values are those of the work just queued."""
    buf, pinned, slots, lens = _setup()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        _delay()
        buf[slots] = lens
        host = buf.cpu().tolist()
        total = buf.sum().item()
        first = int(buf[1])
        any_big = bool((buf > 50).any())
        where = buf.nonzero().flatten().tolist()
        picked = buf[buf > 20].tolist()
        to_cpu = buf.to("cpu").tolist()
    torch.cuda.synchronize()
    observed = [host, total, first, any_big, where, picked, to_cpu]
    return observed, [PUBLISHED, 99, 11, True, SLOTS, [33, 55], PUBLISHED]


def pinned_staging_synced() -> tuple[list, list]:
    """Twin of pinned_staging_overwritten: the host waits on an event recorded after
    the H2D copy before it writes the staging buffer again."""
    staging = torch.zeros(N, dtype=torch.int64, pin_memory=True)
    dst_a, dst_b = _zeros(), _zeros()
    batch_a = torch.arange(1, N + 1, dtype=torch.int64)
    batch_b = torch.arange(101, N + 101, dtype=torch.int64)
    torch.cuda.synchronize()
    h2d = torch.cuda.Stream()
    staging_free = torch.cuda.Event()
    with torch.cuda.stream(h2d):
        staging.copy_(batch_a)
        _delay()
        dst_a.copy_(staging, non_blocking=True)
        staging_free.record()
        staging_free.synchronize()
        staging.copy_(batch_b)
        dst_b.copy_(staging, non_blocking=True)
    torch.cuda.synchronize()
    observed = dst_a.tolist() + dst_b.tolist()
    return observed, batch_a.tolist() + batch_b.tolist()


def offset_views_disjoint() -> tuple[list, list]:
    """Two streams write disjoint offset views of one buffer: no conflict at all."""
    buf = _zeros()
    torch.cuda.synchronize()
    first = torch.cuda.Stream()
    second = torch.cuda.Stream()
    with torch.cuda.stream(first):
        _delay()
        buf[0:4].fill_(1)
    with torch.cuda.stream(second):
        buf[4:8].fill_(2)
    torch.cuda.synchronize()
    observed = buf.tolist()
    return observed, [1, 1, 1, 1, 2, 2, 2, 2]


def spec_off_rerecord() -> tuple[list, list]:
    """Twin of stale_event_spec_off: every step that writes the buffer records
    publish_ready, spec or not."""
    buf, pinned, slots, lens = _setup()
    lens2 = _dev([12, 34, 56])
    torch.cuda.synchronize()
    forward = torch.cuda.Stream()
    d2h = torch.cuda.Stream()
    publish_ready = torch.cuda.Event()
    observed = []
    for step in (1, 2):
        with torch.cuda.stream(forward):
            _delay()
            buf[slots] = lens if step == 1 else lens2
            publish_ready.record()
        d2h.wait_event(publish_ready)
        with torch.cuda.stream(d2h):
            pinned.copy_(buf, non_blocking=True)
        d2h.synchronize()
        observed += pinned.tolist()
    torch.cuda.synchronize()
    return observed, PUBLISHED + [0, 12, 0, 34, 0, 56, 0, 0]


def worker_output_waited() -> tuple[list, list]:
    """Twin: the scheduler's stream waits on the worker's done-event before reading."""
    x = _dev(WORKER_IN)
    torch.cuda.synchronize()
    out, done = _forward_in_worker(x)
    torch.cuda.current_stream().wait_event(done)
    observed = out.cpu().tolist()
    torch.cuda.synchronize()
    return observed, WORKER_OUT


BUGS = {
    "d2h_not_gated": d2h_not_gated,
    "host_reads_pinned_before_sync": host_reads_pinned_before_sync,
    "gather_without_publish_wait": gather_without_publish_wait,
    "event_recorded_before_write": event_recorded_before_write,
    "event_rerecorded_other_stream": event_rerecorded_other_stream,
    "wait_before_record": wait_before_record,
    "missing_war_barrier": missing_war_barrier,
    "freed_without_record_stream": freed_without_record_stream,
    "pinned_staging_overwritten": pinned_staging_overwritten,
    "stale_event_spec_off": stale_event_spec_off,
    "default_stream_init_raced": default_stream_init_raced,
    "offset_view_writes": offset_view_writes,
    "worker_output_read_unsynced": worker_output_read_unsynced,
}

TWINS = {
    "same_stream_fifo": same_stream_fifo,
    "wait_chain_three_streams": wait_chain_three_streams,
    "event_synchronize": event_synchronize,
    "query_polling": query_polling,
    "record_stream": record_stream,
    "war_barrier_read_done": war_barrier_read_done,
    "dp_idle_empty_batches": dp_idle_empty_batches,
    "wait_stream": wait_stream,
    "blocking_cpu_item": blocking_cpu_item,
    "d2h_gated": d2h_gated,
    "gather_after_publish_wait": gather_after_publish_wait,
    "pinned_staging_synced": pinned_staging_synced,
    "offset_views_disjoint": offset_views_disjoint,
    "spec_off_rerecord": spec_off_rerecord,
    "worker_output_waited": worker_output_waited,
}
