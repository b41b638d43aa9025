"""A FutureMap shaped like SGLang's real one (python/sglang/srt/managers/overlap_utils.py):
same constructor, `FutureMap(device, spec_algo, req_to_token_pool, needs_cpu_seq_lens)`,
same methods (`publish`, `stash`, `resolve_seq_lens_cpu`, `_resolve_spec_extras`) and a
module-level `resolve_forward_inputs(batch, future_map)`. Our own code, written from
what those methods do, not copied.

It relays two things from forward n to step n+1, indexed by request-pool slot:
  sequence lengths   `publish` (forward stream) -> `resolve_seq_lens_cpu` (schedule
                     stream, private D2H stream for the host copy), as reference_impl.
  output tokens      `stash(indices, tokens)` (forward stream, after publish) ->
                     `resolve_forward_inputs` (the stream the scheduler resolves on):
                     non-spec decode gathers `output_tokens_buf` into `batch.input_ids`;
                     a prefill batch copies `prefill_input_ids_cpu` to the device and,
                     mixed with running decode requests, appends their relayed tokens
                     (`mix_running_indices`); spec decode gathers the draft input's
                     extras (verified ids, bonus tokens, top-k, hidden states).

One addition to SGLang's shape: `stash` records `stash_ready` after its writes, and
`resolve_forward_inputs` makes the current stream wait for it. SGLang resolves on the
forward stream itself (after `forward_stream.wait_stream(schedule_stream)`), where FIFO
order already covers the stash; this map may also be resolved on the schedule stream,
and then the event is the only edge.

Plain torch ops only. SGLang's debug poisoning is a `torch.compile`d helper that also
runs `torch._assert_async(values >= 0)`; here `debug_poison=True` writes -1 into consumed
slots with an ordinary index_put_ after the gather (the machine's oracle, not an
on-device assert, catches a poisoned value). SGLang gathers spec extras with a Triton
kernel; here they are plain gathers. Compiled and Triton variants are a follow-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .future_map import device_has_streams

POISON = -1  # what a consumed (or never written) token slot holds in debug mode


@dataclass
class ReqToTokenPool:
    """The one thing FutureMap reads of SGLang's ReqToTokenPool: `req_to_token`, whose
    first dimension is the request-pool size."""

    req_to_token: torch.Tensor

    @classmethod
    def make(cls, pool_size: int, device, max_context_len: int = 4) -> "ReqToTokenPool":
        return cls(torch.zeros(pool_size, max_context_len, dtype=torch.int32, device=device))


class FutureMap:
    """Pool-indexed relay of sequence lengths and output tokens across overlap steps.

    Buffers, one row per request-pool slot (slot 0 is the padding row):
      new_seq_lens_buf    int64, written by publish
      output_tokens_buf   int64, written by stash (tokens, or a draft input's bonus tokens)
      verified_id_buf, topk_p_buf, topk_index_buf, hidden_states_buf
                          spec extras, allocated by the first stash of a draft input
                          with the shapes and dtypes it carries
    Events: publish_ready (spec only, lazily), stash_ready (lazily).
    """

    def __init__(self, device, spec_algo, req_to_token_pool, needs_cpu_seq_lens: bool = True,
                 debug_poison: bool = False):
        self.device = torch.device(device)
        self.spec_algo = spec_algo
        self.needs_cpu_seq_lens = needs_cpu_seq_lens
        self.debug_poison = debug_poison
        self.req_pool_size = req_to_token_pool.req_to_token.shape[0]
        n = self.req_pool_size
        # Uninitialized unless poisoning: a gather of a never-stashed slot reads garbage,
        # which is what the machine's oracle must catch.
        self.output_tokens_buf = (torch.full((n,), POISON, dtype=torch.int64, device=self.device)
                                  if debug_poison else
                                  torch.empty(n, dtype=torch.int64, device=self.device))
        self.new_seq_lens_buf = torch.empty(n, dtype=torch.int64, device=self.device)
        streams = device_has_streams(self.device)
        self.mod = torch.get_device_module(self.device)
        self.new_seq_lens_cpu_pinned = (torch.empty(n, dtype=torch.int64, pin_memory=True)
                                        if streams else None)
        self.fwd_prepare_d2h_stream = self.mod.Stream() if streams else None
        self.has_streams = streams
        self.publish_ready = None
        self.stash_ready = None
        self._extras_ready = False

    # --- forward stream ---------------------------------------------------------------

    def publish(self, future_indices: torch.Tensor, new_seq_lens: torch.Tensor) -> None:
        if future_indices.shape[0] == 0:
            return  # DP idle: nothing written, the last fence stays current
        self.new_seq_lens_buf[future_indices] = new_seq_lens.to(torch.int64)
        if self.spec_algo.is_some():
            if self.publish_ready is None:
                self.publish_ready = self.mod.Event()
            self.publish_ready.record()

    def stash(self, future_indices: torch.Tensor, payload) -> None:
        """Forward n's output for each slot of `future_indices`: a token tensor, or a
        draft input (verified_id, bonus_tokens, topk_p, topk_index, hidden_states)."""
        if future_indices.shape[0] == 0:
            return  # DP idle: the payload is an empty stub
        if isinstance(payload, torch.Tensor):
            self.output_tokens_buf[future_indices] = payload.to(torch.int64)
        else:
            self._stash_extras(future_indices, payload)
        self._record_stash()

    def _record_stash(self) -> None:
        """After the writes: the stream that resolves waits on this (see module doc)."""
        if not self.has_streams:
            return
        if self.stash_ready is None:
            self.stash_ready = self.mod.Event()
        self.stash_ready.record()

    def _stash_extras(self, indices: torch.Tensor, draft) -> None:
        if not self._extras_ready:
            self._allocate_extras(draft)
        for name in self._extra_names:
            src = draft.bonus_tokens if name == "bonus_tokens" else getattr(draft, name)
            buf = self._buffer(name)
            buf[indices] = src.to(buf.dtype)

    def _allocate_extras(self, draft) -> None:
        """Shapes and dtypes come from the first draft input stashed (as SGLang does)."""
        self._extras_ready = True
        names = []
        for name in ("verified_id", "bonus_tokens", "topk_p", "topk_index", "hidden_states"):
            value = getattr(draft, name, None)
            if value is None or (name in ("topk_p", "topk_index") and not self.spec_algo.need_topk()):
                continue
            names.append(name)
            if name == "bonus_tokens":
                continue  # bonus tokens share output_tokens_buf
            shape = (self.req_pool_size, *value.shape[1:])
            buf = torch.empty(shape, dtype=value.dtype, device=self.device)
            if self.debug_poison and name == "verified_id":
                buf.fill_(POISON)  # consumed-slot tracking, as for output tokens
            setattr(self, f"{name}_buf", buf)
        self._extra_names = tuple(names)

    def _buffer(self, name: str) -> torch.Tensor:
        return self.output_tokens_buf if name == "bonus_tokens" else getattr(self, f"{name}_buf")

    # --- the resolving stream (schedule, or forward after wait_stream) ----------------

    def wait_for_stash(self) -> None:
        """Order the current stream after the latest stash."""
        if self.stash_ready is not None:
            self.stash_ready.wait()

    def gather_tokens(self, indices: torch.Tensor) -> torch.Tensor:
        """The relayed tokens of `indices`; in debug mode the slots are poisoned after."""
        tokens = self.output_tokens_buf[indices]
        self._consume(self.output_tokens_buf, indices)
        return tokens

    def _consume(self, buf: torch.Tensor, indices: torch.Tensor) -> None:
        """Debug mode: a consumed slot holds POISON until the next stash writes it. The
        write is issued after the gather on the same stream, so FIFO orders them."""
        if self.debug_poison:
            buf[indices] = POISON

    def _resolve_spec_extras(self, batch) -> None:
        draft = batch.spec_info
        if draft is None or not self._extras_ready:
            return  # a prefill batch, or nothing stashed as a draft input yet
        indices = draft.future_indices
        if indices is None or indices.shape[0] == 0:
            return
        if self.has_streams:  # the gathers below read it on this stream
            indices.record_stream(self.mod.current_stream())
        for name in self._extra_names:
            setattr(draft, name, self._buffer(name)[indices])
        for name in ("verified_id", "bonus_tokens"):
            if name in self._extra_names:
                self._consume(self._buffer(name), indices)

    def resolve_seq_lens_cpu(self, batch) -> None:
        """Schedule stream: batch.seq_lens from the last publish; on the host either
        seq_lens_cpu / seq_lens_sum (private D2H stream) or, without
        `needs_cpu_seq_lens`, only the bound `seq_len_cpu_ub` (no host copy)."""
        draft = batch.spec_info
        fi = draft.future_indices if draft is not None else None
        if fi is None:
            return
        if self.publish_ready is not None:
            self.publish_ready.wait()
        batch.seq_lens = self.new_seq_lens_buf[fi]
        if not self.needs_cpu_seq_lens:
            batch.seq_lens_cpu = None
            batch.seq_lens_sum = None
            batch.seq_len_cpu_ub = max((r.kv_allocated_len for r in batch.reqs), default=0)
            return
        batch.seq_len_cpu_ub = None
        if self.fwd_prepare_d2h_stream is None or self.publish_ready is None:
            batch.seq_lens_cpu = batch.seq_lens.cpu()
            batch.seq_lens_sum = int(batch.seq_lens_cpu.sum())
            return
        self.fwd_prepare_d2h_stream.wait_event(self.publish_ready)
        with self.mod.stream(self.fwd_prepare_d2h_stream):
            self.new_seq_lens_cpu_pinned.copy_(self.new_seq_lens_buf, non_blocking=True)
        self.fwd_prepare_d2h_stream.synchronize()
        batch.seq_lens_cpu = self.new_seq_lens_cpu_pinned[batch.req_pool_indices_cpu]
        batch.seq_lens_sum = int(batch.seq_lens_cpu.sum())


def resolve_forward_inputs(batch, future_map: FutureMap) -> None:
    """Materialize the forward's inputs on the current stream: a prefill batch's host
    tokens (H2D), plus relayed tokens of running requests mixed into it; a non-spec
    decode batch's relayed tokens; and, with overlap and spec v2, the draft extras."""
    future_map.wait_for_stash()
    if batch.prefill_input_ids_cpu is not None:
        prefill = batch.prefill_input_ids_cpu.to(batch.device, non_blocking=True)
        if batch.mix_running_indices is not None:
            decode = future_map.gather_tokens(batch.mix_running_indices)
            batch.input_ids = torch.cat([prefill, decode])
        else:
            batch.input_ids = prefill
        batch.prefill_input_ids_cpu = None
        batch.mix_running_indices = None
    elif batch.input_ids is None and future_map.spec_algo.is_none():
        batch.input_ids = future_map.gather_tokens(batch.req_pool_indices)
    if batch.enable_overlap and batch.is_spec_v2:
        future_map._resolve_spec_extras(batch)


def make_future_map(pool_size: int, device, spec) -> FutureMap:
    """The factory form `overlap_machine` accepts: builds the map from the pool size, the
    device and the machine's spec mode (what a factory for SGLang's map does too)."""
    return FutureMap(device, spec, ReqToTokenPool.make(pool_size, device),
                     needs_cpu_seq_lens=spec.needs_cpu_seq_lens, debug_poison=spec.debug_poison)

