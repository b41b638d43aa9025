"""Every bug class of DESIGN.md as a hand trace of the seed's publish/resolve protocol.

The correct protocol, per overlap step:
  forward:  index_put_ writes the batch's slots of new_seq_lens_buf; record publish_ready
  schedule: wait publish_ready; gather the slots (index_select) into seq_lens
  d2h:      wait publish_ready; copy_ the whole buffer into the pinned host buffer
  host:     synchronize d2h; read the pinned buffer (seq_lens_cpu)
Each broken variant drops or misplaces one edge and must be reported with the right pair
of accesses and the right missing edge in words; each correct twin must stay silent.
"""

from __future__ import annotations

import pytest

from pytest_streamorder.model import READ, WRITE, HappensBefore

SLOT = 8  # int64 sequence lengths
SLOTS = 64
BUF_BYTES = SLOT * SLOTS


def slots(indices):
    """Byte ranges of the batch's slots."""
    return [(SLOT * i, SLOT * (i + 1)) for i in indices]


class Seed:
    """The publish/resolve protocol on the model, one method per step, each with the knob
    that the bug classes turn."""

    def __init__(self):
        self.hb = hb = HappensBefore(max_races=100)
        self.fwd = hb.new_stream("forward")
        self.sched = hb.new_stream("schedule")
        self.d2h = hb.new_stream("d2h")
        self.buf = hb.allocate(BUF_BYTES, "new_seq_lens_buf", stream=self.fwd, address=0x10000)
        self.pinned = hb.allocate(BUF_BYTES, "seq_lens_cpu_pinned", space="host")
        self.seq_lens = hb.allocate(BUF_BYTES, "seq_lens", stream=self.sched, address=0x20000)
        self.publish_ready = hb.new_event("publish_ready")

    # forward stream
    def publish(self, batch, record=True, record_first=False, stream=None):
        stream = stream or self.fwd
        if record and record_first:
            self.hb.record(self.publish_ready, stream)
        self.hb.launch(stream, "index_put_",
                       [(self.buf, lo, hi, WRITE) for lo, hi in slots(batch)])
        if record and not record_first:
            self.hb.record(self.publish_ready, stream)

    # schedule stream
    def gather(self, batch, wait=True, stream=None):
        stream = stream or self.sched
        if wait:
            self.hb.wait(stream, self.publish_ready)
        accesses = [(self.buf, lo, hi, READ) for lo, hi in slots(batch)]
        accesses.append((self.seq_lens, 0, SLOT * len(batch), WRITE))
        self.hb.launch(stream, "index_select", accesses)

    # d2h stream
    def d2h_copy(self, wait=True, stream=None):
        stream = stream or self.d2h
        if wait:
            self.hb.wait(stream, self.publish_ready)
        self.hb.launch(stream, "copy_", [(self.buf, 0, BUF_BYTES, READ),
                                         (self.pinned, 0, BUF_BYTES, WRITE)])

    # host
    def resolve(self, sync=True, stream=None):
        if sync:
            self.hb.sync_stream(stream or self.d2h)
        self.hb.host_access("seq_lens_cpu.tolist", [(self.pinned, 0, BUF_BYTES, READ)])

    def step(self, batch):
        self.publish(batch)
        self.gather(batch)
        self.d2h_copy()
        self.resolve()


BATCH = [3, 7, 12]


def race_summary(hb):
    return [(r.earlier.op, r.earlier.agent.name, r.later.op, r.later.agent.name)
            for r in hb.races]


# --- broken variants ---------------------------------------------------------------------------


def d2h_not_gated_on_publish_event(seed):
    seed.publish(BATCH)
    seed.gather(BATCH)
    seed.d2h_copy(wait=False)
    seed.resolve()


def host_reads_pinned_before_d2h_synced(seed):
    seed.publish(BATCH)
    seed.gather(BATCH)
    seed.d2h_copy()
    seed.resolve(sync=False)


def host_syncs_schedule_not_d2h(seed):
    # .tolist() on the schedule (current) stream syncs that stream only
    seed.publish(BATCH)
    seed.gather(BATCH)
    seed.d2h_copy()
    seed.resolve(stream=seed.sched)


def gather_without_waiting_publish_event(seed):
    seed.publish(BATCH)
    seed.gather(BATCH, wait=False)
    seed.d2h_copy()
    seed.resolve()


def event_recorded_before_the_write(seed):
    seed.publish(BATCH, record_first=True)
    seed.gather(BATCH)
    seed.d2h_copy()
    seed.resolve()


def event_re_recorded_on_another_stream(seed):
    # SGLang #30435: the same event object is recorded again on the schedule stream before
    # the consumers wait on it; the fence on forward is gone.
    seed.publish(BATCH)
    seed.hb.record(seed.publish_ready, seed.sched)
    seed.gather(BATCH)
    seed.d2h_copy()
    seed.resolve()


def wait_issued_before_the_record(seed):
    # First step: the wait comes before publish recorded anything: a no-op.
    seed.hb.wait(seed.d2h, seed.publish_ready)
    seed.publish(BATCH)
    seed.gather(BATCH)
    seed.d2h_copy(wait=False)
    seed.resolve()


def wait_issued_before_the_record_of_this_step(seed):
    # Later step: the early wait picks up the previous step's capture.
    seed.step(BATCH)
    seed.hb.wait(seed.d2h, seed.publish_ready)
    seed.publish([5])
    seed.gather([5])
    seed.d2h_copy(wait=False)
    seed.resolve()


def missing_war_barrier(seed):
    # SGLang #26380, #18744: forward n still reads seq_lens while the schedule stream
    # prepares batch n+1 into it.
    seed.step(BATCH)
    seed.hb.wait_stream(seed.fwd, seed.sched)
    seed.hb.launch(seed.fwd, "forward n reads seq_lens", [(seed.seq_lens, 0, 24, READ)])
    seed.hb.launch(seed.sched, "prepare n+1 writes seq_lens", [(seed.seq_lens, 0, 24, WRITE)])


def temporary_freed_without_record_stream(seed):
    # SGLang #34076: a schedule-stream temporary read by forward is freed and its block
    # handed to the next schedule-stream allocation at once.
    hb = seed.hb
    tmp = hb.allocate(256, "req_pool_indices_tmp", stream=seed.sched, address=0x30000)
    hb.launch(seed.sched, "arange", [(tmp, 0, 256, WRITE)])
    hb.wait_stream(seed.fwd, seed.sched)
    hb.launch(seed.fwd, "forward reads tmp", [(tmp, 0, 256, READ)])
    hb.free(tmp)
    nxt = hb.allocate(256, "next_batch_indices", stream=seed.sched, address=0x30000)
    hb.launch(seed.sched, "fill_", [(nxt, 0, 256, WRITE)])


def pinned_staging_overwritten_before_h2d_ran(seed):
    # vLLM #24527: the host refills the pinned staging buffer of step n+1 while the
    # non_blocking H2D copy of step n may not have read it yet.
    hb = seed.hb
    staging = hb.allocate(64, "input_ids_staging", space="host")
    dev = hb.allocate(64, "input_ids", address=0x40000)
    hb.host_access("fill staging n", [(staging, 0, 64, WRITE)])
    hb.launch(seed.fwd, "copy_ H2D n", [(staging, 0, 64, READ), (dev, 0, 64, WRITE)])
    hb.host_access("fill staging n+1", [(staging, 0, 64, WRITE)])


def stale_event_on_spec_off_step(seed):
    # vLLM #34866: the event is recorded only on spec-on steps; on a spec-off (or DP-idle)
    # step the consumer waits the previous step's capture while forward writes again.
    seed.step(BATCH)
    seed.publish([5], record=False)
    seed.gather([5])
    seed.d2h_copy()
    seed.resolve()


def default_stream_init_raced_by_side_stream(seed):
    hb = seed.hb
    default = hb.new_stream("default")
    hb.launch(default, "zero_", [(seed.buf, 0, BUF_BYTES, WRITE)])
    seed.publish(BATCH)  # forward is a side stream: no implicit sync with default


def offset_view_writes(seed):
    # Two views with different data_ptr of one storage: buf[32:] and buf[40:48].
    hb = seed.hb
    hb.launch(seed.fwd, "index_put_ on buf[32:]", [(seed.buf, 32 * SLOT, BUF_BYTES, WRITE)])
    hb.launch(seed.sched, "copy_ into buf[40:48]", [(seed.buf, 40 * SLOT, 48 * SLOT, WRITE)])


BROKEN = [
    # (trace, earlier op, earlier stream, later op, later stream, words in the explanation)
    pytest.param(d2h_not_gated_on_publish_event, "index_put_", "forward", "copy_", "d2h",
                 ["stream 'd2h' read this before waiting for any event recorded on 'forward' "
                  "after the write by index_put_"],
                 id="d2h-not-gated-on-publish-event"),
    pytest.param(host_reads_pinned_before_d2h_synced, "copy_", "d2h", "seq_lens_cpu.tolist",
                 "host", ["the host read this before synchronizing with 'd2h'"],
                 id="host-reads-pinned-before-d2h-synced"),
    pytest.param(host_syncs_schedule_not_d2h, "copy_", "d2h", "seq_lens_cpu.tolist", "host",
                 ["the host read this before synchronizing with 'd2h'"],
                 id="host-syncs-current-stream-not-d2h"),
    pytest.param(gather_without_waiting_publish_event, "index_put_", "forward", "index_select",
                 "schedule",
                 ["stream 'schedule' read this before waiting for any event recorded on "
                  "'forward'"],
                 id="schedule-gather-without-waiting-publish-event"),
    pytest.param(event_recorded_before_the_write, "index_put_", "forward", "index_select",
                 "schedule",
                 ["It waited on event 'publish_ready', but that event was recorded on "
                  "'forward' at op #0, before the write"],
                 id="event-recorded-before-the-write"),
    pytest.param(event_re_recorded_on_another_stream, "index_put_", "forward", "index_select",
                 "schedule",
                 ["re-recorded on 'schedule'", "the fence on 'forward' was gone"],
                 id="event-re-recorded-on-another-stream"),
    pytest.param(wait_issued_before_the_record, "index_put_", "forward", "copy_", "d2h",
                 ["It waited on event 'publish_ready' before the event was ever recorded"],
                 id="wait-issued-before-the-record"),
    pytest.param(wait_issued_before_the_record_of_this_step, "index_put_", "forward", "copy_",
                 "d2h", ["recorded on 'forward' at op #1, before the write"],
                 id="wait-issued-before-the-record-of-this-step"),
    pytest.param(missing_war_barrier, "forward n reads seq_lens", "forward",
                 "prepare n+1 writes seq_lens", "schedule",
                 ["stream 'schedule' wrote this before waiting for any event recorded on "
                  "'forward' after the read by forward n reads seq_lens"],
                 id="missing-war-barrier"),
    pytest.param(temporary_freed_without_record_stream, "forward reads tmp", "forward", "fill_",
                 "schedule",
                 ["req_pool_indices_tmp was freed", "handed the block to next_batch_indices",
                  "tensor.record_stream(<'forward' stream>)"],
                 id="temporary-freed-without-record-stream"),
    pytest.param(pinned_staging_overwritten_before_h2d_ran, "copy_ H2D n", "forward",
                 "fill staging n+1", "host",
                 ["the host overwrote memory that copy_ H2D n on 'forward' (op #1) may not have read yet", "pinned staging"],
                 id="pinned-staging-overwritten-before-h2d-ran"),
    pytest.param(stale_event_on_spec_off_step, "index_put_", "forward", "index_select",
                 "schedule",
                 ["It waited on event 'publish_ready', but that event was recorded on "
                  "'forward' at op #1, before the write"],
                 id="stale-event-on-spec-off-step"),
    pytest.param(default_stream_init_raced_by_side_stream, "zero_", "default", "index_put_",
                 "forward",
                 ["stream 'forward' wrote this before waiting for any event recorded on "
                  "'default'"],
                 id="default-stream-init-raced-by-side-stream"),
    pytest.param(offset_view_writes, "index_put_ on buf[32:]", "forward",
                 "copy_ into buf[40:48]", "schedule",
                 ["stream 'schedule' wrote this before waiting"],
                 id="offset-view-writes"),
]


@pytest.mark.parametrize("trace, e_op, e_stream, l_op, l_stream, words", BROKEN)
def test_broken_variant_is_reported(trace, e_op, e_stream, l_op, l_stream, words):
    seed = Seed()
    trace(seed)
    hb = seed.hb
    assert hb.races, "the broken variant went unnoticed"
    assert race_summary(hb)[0] == (e_op, e_stream, l_op, l_stream)
    explanation = hb.races[0].explain()
    for text in words:
        assert text in explanation
    assert explanation in str(hb.races[0])


def test_broken_variants_report_exactly_the_racy_accesses():
    """The counts pin down that each variant reports its one missing edge, not a cascade."""
    counts = {}
    for param in BROKEN:
        seed = Seed()
        param.values[0](seed)
        counts[param.id] = len(seed.hb.races)
    assert counts == {
        "d2h-not-gated-on-publish-event": 1,
        "host-reads-pinned-before-d2h-synced": 1,
        "host-syncs-current-stream-not-d2h": 1,
        "schedule-gather-without-waiting-publish-event": 3,  # one per gathered slot
        "event-recorded-before-the-write": 4,  # the gather's 3 slots and the d2h copy
        "event-re-recorded-on-another-stream": 4,  # the gather's 3 slots and the d2h copy
        "wait-issued-before-the-record": 1,
        "wait-issued-before-the-record-of-this-step": 1,
        "missing-war-barrier": 1,
        "temporary-freed-without-record-stream": 1,
        "pinned-staging-overwritten-before-h2d-ran": 1,
        "stale-event-on-spec-off-step": 2,  # the gather's slot and the d2h copy
        "default-stream-init-raced-by-side-stream": 3,  # one per written slot
        "offset-view-writes": 1,
    }


def test_offset_view_race_reports_the_overlapping_byte_ranges():
    seed = Seed()
    offset_view_writes(seed)
    race = seed.hb.races[0]
    assert race.alloc is seed.buf
    assert (race.earlier.start, race.earlier.stop) == (256, 512)
    assert (race.later.start, race.later.stop) == (320, 384)


# --- correct twins -----------------------------------------------------------------------------


def correct_protocol_over_many_steps(seed):
    for n in range(5):
        seed.step([n, n + 10, n + 20])


def same_stream_fifo(seed):
    fwd = seed.fwd
    seed.publish(BATCH)
    seed.gather(BATCH, wait=False, stream=fwd)
    seed.d2h_copy(wait=False, stream=fwd)
    seed.resolve(stream=fwd)


def wait_chain_across_three_streams(seed):
    # forward -> schedule -> d2h: d2h waits only schedule's event, which chains to publish.
    gathered = seed.hb.new_event("gathered")
    seed.publish(BATCH)
    seed.gather(BATCH)
    seed.hb.record(gathered, seed.sched)
    seed.hb.wait(seed.d2h, gathered)
    seed.d2h_copy(wait=False)
    seed.resolve()


def event_synchronize(seed):
    copied = seed.hb.new_event("copied")
    seed.publish(BATCH)
    seed.gather(BATCH)
    seed.d2h_copy()
    seed.hb.record(copied, seed.d2h)
    seed.hb.sync_event(copied)
    seed.resolve(sync=False)


def query_polling(seed):
    copied = seed.hb.new_event("copied")
    seed.publish(BATCH)
    seed.gather(BATCH)
    seed.d2h_copy()
    seed.hb.record(copied, seed.d2h)
    # while not copied.query(): ...  -- the True answer orders the host after the copy
    seed.hb.sync_event(copied)
    seed.resolve(sync=False)


def stream_query_polling(seed):
    seed.publish(BATCH)
    seed.gather(BATCH)
    seed.d2h_copy()
    seed.hb.sync_stream(seed.d2h)  # while not d2h.query(): ...
    seed.resolve(sync=False)


def device_synchronize(seed):
    seed.publish(BATCH)
    seed.gather(BATCH)
    seed.d2h_copy()
    seed.hb.sync_device()
    seed.resolve(sync=False)


def record_stream_before_free(seed):
    hb = seed.hb
    tmp = hb.allocate(256, "req_pool_indices_tmp", stream=seed.sched, address=0x30000)
    hb.launch(seed.sched, "arange", [(tmp, 0, 256, WRITE)])
    hb.wait_stream(seed.fwd, seed.sched)
    hb.launch(seed.fwd, "forward reads tmp", [(tmp, 0, 256, READ)])
    hb.record_stream(tmp, seed.fwd)
    hb.free(tmp)
    nxt = hb.allocate(256, "next_batch_indices", stream=seed.sched, address=0x30000)
    hb.launch(seed.sched, "fill_", [(nxt, 0, 256, WRITE)])


def war_barrier_via_read_done_event(seed):
    read_done = seed.hb.new_event("read_done")
    seed.step(BATCH)
    seed.hb.wait_stream(seed.fwd, seed.sched)
    seed.hb.launch(seed.fwd, "forward n reads seq_lens", [(seed.seq_lens, 0, 24, READ)])
    seed.hb.record(read_done, seed.fwd)
    seed.hb.wait(seed.sched, read_done)
    seed.hb.launch(seed.sched, "prepare n+1 writes seq_lens", [(seed.seq_lens, 0, 24, WRITE)])


def empty_dp_idle_batches(seed):
    # A DP-idle rank publishes nothing (zero-size index_put_, zero-size gather) but keeps
    # recording the event, so the whole-buffer copy stays gated.
    seed.step(BATCH)
    for _ in range(3):
        seed.step([])
    seed.step([4])


def staging_refilled_after_h2d_done(seed):
    hb = seed.hb
    staging = hb.allocate(64, "input_ids_staging", space="host")
    dev = hb.allocate(64, "input_ids", address=0x40000)
    h2d_done = hb.new_event("h2d_done")
    for n in range(3):
        hb.host_access(f"fill staging {n}", [(staging, 0, 64, WRITE)])
        hb.launch(seed.fwd, f"copy_ H2D {n}", [(staging, 0, 64, READ), (dev, 0, 64, WRITE)])
        hb.record(h2d_done, seed.fwd)
        hb.sync_event(h2d_done)


def side_stream_waits_default_init(seed):
    default = seed.hb.new_stream("default")
    seed.hb.launch(default, "zero_", [(seed.buf, 0, BUF_BYTES, WRITE)])
    seed.hb.wait_stream(seed.fwd, default)
    seed.step(BATCH)


def disjoint_offset_views(seed):
    seed.hb.launch(seed.fwd, "index_put_ on buf[:32]", [(seed.buf, 0, 32 * SLOT, WRITE)])
    seed.hb.launch(seed.sched, "copy_ into buf[32:48]",
                   [(seed.buf, 32 * SLOT, 48 * SLOT, WRITE)])


CORRECT = [
    pytest.param(correct_protocol_over_many_steps, id="correct-protocol-over-many-steps"),
    pytest.param(same_stream_fifo, id="same-stream-fifo"),
    pytest.param(wait_chain_across_three_streams, id="wait-chain-across-three-streams"),
    pytest.param(event_synchronize, id="event-synchronize"),
    pytest.param(query_polling, id="event-query-polling"),
    pytest.param(stream_query_polling, id="stream-query-polling"),
    pytest.param(device_synchronize, id="device-synchronize"),
    pytest.param(record_stream_before_free, id="record-stream-before-free"),
    pytest.param(war_barrier_via_read_done_event, id="war-barrier-via-read-done-event"),
    pytest.param(empty_dp_idle_batches, id="empty-dp-idle-batches"),
    pytest.param(staging_refilled_after_h2d_done, id="staging-refilled-after-h2d-done"),
    pytest.param(side_stream_waits_default_init, id="side-stream-waits-default-init"),
    pytest.param(disjoint_offset_views, id="disjoint-offset-views"),
]


@pytest.mark.parametrize("trace", CORRECT)
def test_correct_twin_is_silent(trace):
    seed = Seed()
    trace(seed)
    assert seed.hb.races == [], "\n\n".join(str(r) for r in seed.hb.races)
    assert seed.hb.accesses > 0


def test_dp_idle_steps_touch_nothing_but_the_whole_buffer_copy():
    seed = Seed()
    seed.step([])
    # the empty index_put_ and gather are zero-size; the d2h copy (2) and host read (1) count
    assert seed.hb.accesses == 3
    assert seed.hb.races == []
