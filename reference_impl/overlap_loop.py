"""A small overlap scheduler driving a FutureMap, written as real multi-stream CUDA code.

The host prepares batch n+1 on the *schedule stream* while forward n runs on the
*forward stream*; the FutureMap adds its private *D2H stream*. On cuda these are device
streams ordered by events; on cpu (eager, see `device_has_streams`) they are None, the
stream contexts are no-ops, and the same code runs as plain sequential torch.

One step, as the host issues it (`OverlapLoop.step`):

  host       wait `staging_free` (the previous step's H2D copies read the pinned
             staging buffer), then write this step's host inputs into it.
  schedule   WAR barrier: wait `read_done` of forward n (it read the input buffers).
             H2D: staging -> persistent `fwd_inputs` (row 0 req_pool_indices, row 1
             accept lens) and fresh tensors (seed slots/lengths, host seq_lens).
             record `staging_free`.
             Seed new requests into the FutureMap: wait `publish_ready` (chain the
             fence, SGLang #30435), then `future_map.publish(slots, lengths)`.
             Build the ScheduleBatch; spec: `future_map.resolve_seq_lens_cpu(batch)`
             (gather + private D2H; the host gets seq_lens_cpu before forward n ends).
             Spec off: the host supplies seq_lens itself (H2D).
             record `inputs_ready`.
  forward    wait `inputs_ready`; read `fwd_inputs` once (like an embedding lookup);
             record `read_done`; new_seq_lens = seq_lens + accept; `future_map.publish`;
             "draft extend" (more work after publish); record `fwd_done`.
  host       `batch.seq_lens.record_stream(forward)`: the schedule stream allocated it,
             the forward reads it, and the host drops it when step() returns.

Why `read_done` and not `fwd_done` for the WAR barrier: the barrier only has to cover
the forward's reads of the input buffers. Waiting for the whole forward (SGLang's first
fix, #26380; `coarse_war_barrier=True` here) is also correct but puts the schedule
stream behind the publish as well, which hides (and makes redundant) the publish_ready
edges that resolve and seeding rely on. The fine-grained barrier keeps them load-bearing,
as they are in SGLang with its read-done event.

What the lengths mean. Every live slot has a true length (the `Oracle`). A step reads
the lengths *before* its forward, and its forward adds `accept_lens`:
  spec=True   lengths come through the FutureMap, as if only the device knew them (in
              speculative decoding verify decides accept lengths on the device).
  spec=False  the host supplies them from its own bookkeeping (a prefill/extend batch, or
              non-speculative decode): spec_info is None and resolve returns at once.
Every non-empty forward publishes, spec or not, so the FutureMap is always current. A new
request (`admit`) is seeded into the FutureMap on the schedule stream at the start of
the next step, so its very first step may be a spec step.
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import torch

from .future_map import FutureMap, ScheduleBatch, SpecAlgorithm, SpecInfo, device_has_streams

# Rows of the pinned host staging buffer (one H2D source per row).
ROW_INDICES = 0  # req_pool_indices of the batch
ROW_ACCEPT = 1  # accept lens of the batch
ROW_SEQ_LENS = 2  # host-known seq_lens (spec-off steps)
ROW_SEED_SLOTS = 3  # slots of requests admitted since the last step
ROW_SEED_LENS = 4  # their initial lengths
_STAGING_ROWS = 5


class Oracle:
    """Ground truth in pure Python: each live slot's sequence length."""

    def __init__(self, pool_size: int):
        self.pool_size = pool_size
        self.lens: dict[int, int] = {}

    def admit(self, slot: int, length: int) -> None:
        self.lens[slot] = length

    def free(self, slot: int) -> None:
        del self.lens[slot]

    def seq_lens(self, indices: Iterable[int]) -> list[int]:
        return [self.lens[i] for i in indices]

    def advance(self, indices: Sequence[int], accept_lens: Sequence[int]) -> None:
        for i, a in zip(indices, accept_lens):
            self.lens[i] += a


@dataclass
class StepResult:
    """What one step resolved, next to what the oracle says it should be.

    seq_lens_cpu / seq_lens_sum are the host values the step handed to the forward
    (lengths before this step's forward). `seq_lens` is the device batch.seq_lens,
    snapshotted on the schedule stream and read only after a full device sync: it is None
    until `OverlapLoop.synchronize()` (or `finish()`) fills it in.
    """

    step: int
    indices: list[int]
    accept_lens: list[int]
    spec: bool
    seq_lens_cpu: list[int]
    seq_lens_sum: int
    expected_seq_lens: list[int]
    expected_sum: int
    seq_lens: Optional[list[int]] = None
    _seq_lens_snapshot: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)

    @property
    def host_ok(self) -> bool:
        return self.seq_lens_cpu == self.expected_seq_lens and self.seq_lens_sum == self.expected_sum

    @property
    def device_ok(self) -> Optional[bool]:
        """None until synchronized."""
        return None if self.seq_lens is None else self.seq_lens == self.expected_seq_lens

    def check(self) -> None:
        """Raise AssertionError naming what is stale (device part only once synced)."""
        problems = []
        if self.seq_lens_cpu != self.expected_seq_lens:
            problems.append(f"seq_lens_cpu={self.seq_lens_cpu} expected {self.expected_seq_lens}")
        if self.seq_lens_sum != self.expected_sum:
            problems.append(f"seq_lens_sum={self.seq_lens_sum} expected {self.expected_sum}")
        if self.seq_lens is not None and self.seq_lens != self.expected_seq_lens:
            problems.append(f"device seq_lens={self.seq_lens} expected {self.expected_seq_lens}")
        if problems:
            kind = "spec" if self.spec else "spec-off"
            raise AssertionError(
                f"step {self.step} ({kind}, indices={self.indices}): " + "; ".join(problems))


class OverlapLoop:
    """Overlap scheduler: `admit`, `free`, `step`, `synchronize`/`finish`.

    OverlapLoop(pool_size, device="cpu", future_map_cls=FutureMap,
                spec_algo=SpecAlgorithm.EAGLE, coarse_war_barrier=False)

    Slots are 1..pool_size-1 (slot 0 is the padding row). Bad input raises ValueError
    before any device work is issued, so a rejected call leaves the loop usable.
    """

    def __init__(
        self,
        pool_size: int,
        device: torch.device | str = "cpu",
        future_map_cls: type[FutureMap] = FutureMap,
        spec_algo: SpecAlgorithm = SpecAlgorithm.EAGLE,
        coarse_war_barrier: bool = False,
    ):
        pool_size = _as_int(pool_size, "pool_size")
        if pool_size < 2:
            raise ValueError(
                f"pool_size must be at least 2 (slot 0 is the padding row), got {pool_size}")
        self.pool_size = pool_size
        self.device = torch.device(device)
        self.mod = torch.get_device_module(self.device)
        self.has_streams = device_has_streams(self.device)
        self.spec_algo = spec_algo
        self.coarse_war_barrier = coarse_war_barrier

        # Everything below is allocated and zero-filled on the current (default) stream.
        self.future_map = future_map_cls(pool_size, self.device, spec_algo)
        # Persistent forward inputs, read by forward n while batch n+1 is prepared: row 0
        # req_pool_indices, row 1 accept lens. One allocation, two rows (offset views).
        self.fwd_inputs = torch.zeros(2, pool_size, dtype=torch.int64, device=self.device)
        # Forward-private output of the "draft extend" after publish.
        self.draft_scratch = torch.zeros(pool_size, dtype=torch.int64, device=self.device)
        # Host inputs go through pinned memory so the H2D copies can be non_blocking.
        self.staging = torch.zeros(
            _STAGING_ROWS, pool_size, dtype=torch.int64, pin_memory=self.has_streams)

        if self.has_streams:
            self.schedule_stream = self.mod.Stream()
            self.forward_stream = self.mod.Stream()
            self.inputs_ready = self.mod.Event()  # schedule -> forward: inputs written
            self.read_done = self.mod.Event()  # forward -> schedule: inputs consumed (WAR)
            self.fwd_done = self.mod.Event()  # end of forward
            self.staging_free = self.mod.Event()  # H2D copies out of `staging` have run
        else:
            self.schedule_stream = self.forward_stream = None
            self.inputs_ready = self.read_done = self.fwd_done = self.staging_free = None
        self._order_after_init()

        self.oracle = Oracle(pool_size)
        self._host_lens: dict[int, int] = {}  # the host's own bookkeeping of live slots
        self._pending_seeds: dict[int, int] = {}  # admitted, not yet in the FutureMap
        self._unsynced: list[StepResult] = []
        self.steps = 0

    # ----------------------------------------------------------------- public API

    @property
    def live_slots(self) -> list[int]:
        return sorted(self._host_lens)

    @property
    def free_slots(self) -> list[int]:
        return [s for s in range(1, self.pool_size) if s not in self._host_lens]

    def admit(self, slot: int, length: int) -> None:
        """A new request takes `slot` with `length` tokens; seeded at the next step."""
        slot = self._check_slot(slot)
        length = _as_int(length, "length")
        if slot in self._host_lens:
            raise ValueError(f"slot {slot} already holds a request")
        if length < 0:
            raise ValueError(f"negative length {length} for slot {slot}")
        self._host_lens[slot] = length
        self._pending_seeds[slot] = length
        self.oracle.admit(slot, length)

    def free(self, slot: int) -> None:
        """The request in `slot` finished; the slot may be admitted again at once."""
        slot = self._check_slot(slot)
        if slot not in self._host_lens:
            raise ValueError(f"slot {slot} holds no request")
        del self._host_lens[slot]
        self._pending_seeds.pop(slot, None)
        self.oracle.free(slot)

    def step(self, indices: Sequence[int], accept_lens: Sequence[int], spec: bool = True) -> StepResult:
        """Prepare and launch one batch. An empty batch is a DP-idle step."""
        indices, accept_lens = self._validate_step(indices, accept_lens, spec)
        n = len(indices)
        seeds = sorted(self._pending_seeds.items())
        m = len(seeds)
        host_seq_lens = [self._host_lens[i] for i in indices]

        # Host: the pinned staging buffer may still be read by the previous step's
        # non_blocking H2D copies; wait for them before overwriting it.
        self._reserve_staging()
        self._stage(ROW_INDICES, indices)
        self._stage(ROW_ACCEPT, accept_lens)
        self._stage(ROW_SEQ_LENS, host_seq_lens)
        self._stage(ROW_SEED_SLOTS, [s for s, _ in seeds])
        self._stage(ROW_SEED_LENS, [length for _, length in seeds])

        with self._on(self.schedule_stream):
            self._write_fwd_inputs(n)  # WAR barrier + H2D into the persistent buffer
            seed_slots = self._upload(ROW_SEED_SLOTS, m)
            seed_lens = self._upload(ROW_SEED_LENS, m)
            seq_lens = None if spec else self._upload(ROW_SEQ_LENS, n)
            self._release_staging()
            self._seed(seed_slots, seed_lens)
            batch = ScheduleBatch(
                req_pool_indices=self.fwd_inputs[ROW_INDICES, :n],
                req_pool_indices_cpu=torch.tensor(indices, dtype=torch.int64),
            )
            if spec:
                batch.spec_info = SpecInfo(future_indices=batch.req_pool_indices)
                self.future_map.resolve_seq_lens_cpu(batch)
            else:
                batch.seq_lens = seq_lens
                batch.seq_lens_cpu = torch.tensor(host_seq_lens, dtype=torch.int64)
                batch.seq_lens_sum = int(batch.seq_lens_cpu.sum())
            # For the result: a copy in FIFO order after the gather/H2D, read after sync.
            snapshot = batch.seq_lens.clone()
            self._hand_off_inputs()

        self._launch_forward(batch, n, spec)
        self._protect_temporaries(batch)

        # Host bookkeeping, after the launch (the host knows accept lens; see module doc).
        expected = self.oracle.seq_lens(indices)
        self.oracle.advance(indices, accept_lens)
        for i, a in zip(indices, accept_lens):
            self._host_lens[i] += a
        self._pending_seeds.clear()

        result = StepResult(
            step=self.steps,
            indices=list(indices),
            accept_lens=list(accept_lens),
            spec=spec,
            seq_lens_cpu=batch.seq_lens_cpu.tolist(),
            seq_lens_sum=int(batch.seq_lens_sum),
            expected_seq_lens=expected,
            expected_sum=sum(expected),
            _seq_lens_snapshot=snapshot,
        )
        self._unsynced.append(result)
        self.steps += 1
        return result

    def synchronize(self) -> list[StepResult]:
        """Sync the whole device, then fill `seq_lens` of every result since the last
        sync; returns those results."""
        self.mod.synchronize(self.device)
        done, self._unsynced = self._unsynced, []
        for r in done:
            r.seq_lens = r._seq_lens_snapshot.tolist()
            r._seq_lens_snapshot = None
        return done

    def finish(self) -> list[StepResult]:
        """End of a run: synchronize (see there)."""
        return self.synchronize()

    def device_seq_lens(self) -> dict[int, int]:
        """After a full sync: the FutureMap's device buffer for every live slot that has
        been seeded (compare with `oracle.lens`)."""
        self.synchronize()
        buf = self.future_map.new_seq_lens_buf.tolist()
        return {s: buf[s] for s in self.live_slots if s not in self._pending_seeds}

    # ------------------------------------------------- ordering steps (one per edge)
    # Each method is one happens-before edge (or one guarded access); mutants.py drops or
    # misplaces exactly one of them. All are no-ops where the device has no streams.

    def _order_after_init(self) -> None:
        """Side streams wait for the default-stream zero-fills of the buffers they use."""
        if not self.has_streams:
            return
        init = self.mod.current_stream(self.device)
        for s in (self.schedule_stream, self.forward_stream, self.future_map.fwd_prepare_d2h_stream):
            if s is not None:
                s.wait_stream(init)

    def _reserve_staging(self) -> None:
        """Host waits until the previous step's H2D copies have read the staging buffer."""
        if self.staging_free is not None:
            self.staging_free.synchronize()

    def _release_staging(self) -> None:
        """Schedule stream: every H2D copy out of `staging` for this step is enqueued."""
        if self.staging_free is not None:
            self.staging_free.record(self.schedule_stream)

    def _war_barrier(self) -> None:
        """Schedule stream waits until forward n has read the buffers we rewrite next."""
        if not self.has_streams:
            return
        self.schedule_stream.wait_event(self.fwd_done if self.coarse_war_barrier else self.read_done)

    def _write_fwd_inputs(self, n: int) -> None:
        """Barrier first, then rewrite both rows of the persistent input buffer."""
        self._war_barrier()
        self._h2d(self.fwd_inputs[ROW_INDICES, :n], self.staging[ROW_INDICES, :n])
        self._h2d(self.fwd_inputs[ROW_ACCEPT, :n], self.staging[ROW_ACCEPT, :n])

    def _chain_publish_fence(self) -> None:
        """Before publish re-records publish_ready on the schedule stream, make this stream
        wait for its current capture (the in-flight forward's publish). An event holds one
        capture, so without this the re-record drops the fence on the forward's write
        (SGLang #30435). Without any spec event yet, fall back to the forward's end."""
        if not self.has_streams:
            return
        ready = self.future_map.publish_ready
        self.schedule_stream.wait_event(ready if ready is not None else self.fwd_done)

    def _seed(self, slots: torch.Tensor, lens: torch.Tensor) -> None:
        """Schedule stream: write admitted requests' lengths into the FutureMap."""
        if slots.shape[0] == 0:
            return
        self._chain_publish_fence()
        self.future_map.publish(slots, lens)

    def _hand_off_inputs(self) -> None:
        """Record on the schedule stream, *then* make the forward stream wait on it."""
        if not self.has_streams:
            return
        self.inputs_ready.record(self.schedule_stream)
        self.forward_stream.wait_event(self.inputs_ready)

    def _publish(self, indices: torch.Tensor, new_seq_lens: torch.Tensor, spec: bool) -> None:
        """Forward stream: every non-empty forward publishes, spec or not, so
        publish_ready always fences the latest write to new_seq_lens_buf."""
        self.future_map.publish(indices, new_seq_lens)

    def _protect_temporaries(self, batch: ScheduleBatch) -> None:
        """batch.seq_lens was allocated on the schedule stream and is read by the forward;
        the host drops it when step() returns. record_stream keeps the allocator from
        handing its block to the schedule stream's next allocation before the forward
        has read it."""
        if self.has_streams:
            batch.seq_lens.record_stream(self.forward_stream)

    # ------------------------------------------------------------------ the forward

    def _launch_forward(self, batch: ScheduleBatch, n: int, spec: bool) -> None:
        with self._on(self.forward_stream):
            # The forward's first kernel consumes the input buffers (think embedding
            # lookup); everything after works on its own copy, so read_done can let the
            # schedule stream rewrite them while the rest of the forward runs. One read of
            # the 2-D view [:, :n] covers both rows.
            work = self.fwd_inputs[:, :n].clone()
            if self.has_streams:
                self.read_done.record(self.forward_stream)
            indices, accept = work[ROW_INDICES], work[ROW_ACCEPT]
            # "verify": each request grew by its accepted tokens.
            new_seq_lens = batch.seq_lens + accept
            self._publish(indices, new_seq_lens, spec)
            # "draft extend": more work on this stream after publish. It reads only the
            # forward's own tensors; reading new_seq_lens_buf here would race the next
            # step's seeding of a reused slot, which orders itself after publish only.
            self.draft_scratch[:n].copy_(new_seq_lens * 2 + accept)
            if self.has_streams:
                self.fwd_done.record(self.forward_stream)

    # --------------------------------------------------------------------- helpers

    def _on(self, stream):
        """`with self._on(s):` makes s current; a no-op where there are no streams."""
        return self.mod.stream(stream) if stream is not None else contextlib.nullcontext()

    def _stage(self, row: int, values: Sequence[int]) -> None:
        """Host write into the pinned staging buffer (a plain host copy)."""
        if values:
            self.staging[row, : len(values)].copy_(torch.tensor(values, dtype=torch.int64))

    def _h2d(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src, non_blocking=True)

    def _upload(self, row: int, n: int) -> torch.Tensor:
        """H2D of staging[row, :n] into a fresh device tensor (allocated on the current,
        i.e. schedule, stream)."""
        out = torch.empty(n, dtype=torch.int64, device=self.device)
        self._h2d(out, self.staging[row, :n])
        return out

    def _check_slot(self, slot) -> int:
        slot = _as_int(slot, "slot")
        if slot == 0:
            raise ValueError(f"index 0 is the padding slot (slots 1..{self.pool_size - 1})")
        if not 0 < slot < self.pool_size:
            raise ValueError(f"index {slot} is outside the pool (slots 1..{self.pool_size - 1})")
        return slot

    def _validate_step(self, indices, accept_lens, spec) -> tuple[list[int], list[int]]:
        indices = [_as_int(i, "indices") for i in indices]
        accept_lens = [_as_int(a, "accept_lens") for a in accept_lens]
        if len(indices) != len(accept_lens):
            raise ValueError(
                f"shape mismatch: len(indices)={len(indices)} != len(accept_lens)={len(accept_lens)}")
        seen: set[int] = set()
        for i in indices:
            self._check_slot(i)
            if i in seen:
                raise ValueError(f"duplicate index {i} in one batch")
            seen.add(i)
            if i not in self._host_lens:
                raise ValueError(f"slot {i} holds no request (admit it first)")
        for a in accept_lens:
            if a < 0:
                raise ValueError(f"negative length {a} in accept_lens")
        if spec and not self.spec_algo.is_some():
            raise ValueError("spec step on a loop built with SpecAlgorithm.NONE")
        return indices, accept_lens


def _as_int(x, what: str) -> int:
    if isinstance(x, bool):
        raise ValueError(f"{what} must be ints, got {x!r}")
    try:
        return operator.index(x)
    except TypeError:
        raise ValueError(f"{what} must be ints, got {x!r}") from None
