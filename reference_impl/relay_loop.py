"""An overlap loop that drives a FutureMap shaped like SGLang's (relay_map.py, or
SGLang's own through a factory) through both of its relays: sequence lengths and
output tokens, with an oracle of what each step must resolve.

One step, on top of OverlapLoop's (see overlap_loop.py for the staging, WAR barrier,
seeding and hand-off edges, unchanged here):

  host       order the batch as SGLang does: new requests (prefill) first, then running
             ones (decode). Spec on: a batch is prefill-only or decode-only (SGLang's
             map does not resolve spec extras of mixed batches).
  schedule   build the batch (`make_batch(**fields)`); a spec decode batch gets a draft
             input with `future_indices` and goes through `resolve_seq_lens_cpu`.
             resolve_on="schedule": `resolve_forward_inputs(batch, future_map)` here.
  forward    resolve_on="forward": `forward_stream.wait_stream(schedule_stream)` and
             `resolve_forward_inputs` here, as SGLang's scheduler does.
             Read the inputs; publish new lengths; compute each request's output from
             its last input token; `future_map.stash(indices, tokens or draft input)`.

The forward's outputs depend on what was resolved, so a stale token also corrupts what
follows; the oracle computes the same functions in Python. What the step resolved is
cloned on the resolving stream and compared after the next full sync.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

import torch

from .overlap_loop import (
    ROW_ACCEPT, ROW_INDICES, ROW_SEED_LENS, ROW_SEED_SLOTS, ROW_SEQ_LENS, OverlapLoop, StepResult,
)
from .relay_map import ReqToTokenPool

VOCAB = 1000
RESOLVE_ON = ("schedule", "forward")
EXTRAS = ("verified_id", "bonus_tokens", "topk_p", "topk_index", "hidden_states")


# --- what a forward computes from a request's last input token (device and oracle) ----

def next_token(t):
    return (t * 7 + 1) % VOCAB


def draft_payload(t, topk: int, hidden_size: int) -> dict:
    """A spec forward's outputs for last tokens `t` (a tensor, or an int for the oracle)."""
    if isinstance(t, int):
        return {"verified_id": next_token(t), "bonus_tokens": (t * 11 + 3) % VOCAB,
                "topk_index": [(t + 13 * k) % VOCAB for k in range(topk)] if topk else None,
                "topk_p": [((t + k) % 16) / 16 for k in range(topk)] if topk else None,
                "hidden_states": [((t * 5 + h) % 97) * 0.5 for h in range(hidden_size)]
                if hidden_size else None}
    k = torch.arange(topk, device=t.device)
    h = torch.arange(hidden_size, device=t.device)
    col = t[:, None]
    return {"verified_id": next_token(t), "bonus_tokens": (t * 11 + 3) % VOCAB,
            "topk_index": (col + 13 * k) % VOCAB if topk else None,
            "topk_p": ((col + k) % 16).to(torch.float32) / 16 if topk else None,
            "hidden_states": ((col * 5 + h) % 97).to(torch.float32) * 0.5 if hidden_size else None}


def prompt_tokens(slot: int, generation: int, length: int) -> list[int]:
    """A new request's prompt chunk: 1-3 tokens, distinct per slot and reuse."""
    return [(100 + 37 * generation + 11 * slot + j) % VOCAB for j in range(1 + length % 3)]


@dataclass
class _Req:
    slot: int
    kv_allocated_len: int


@dataclass
class RelayStepResult(StepResult):
    """A StepResult plus the token relay: what the step resolved (filled after a sync)
    and what the oracle says it should have. Without needs_cpu_seq_lens a spec batch has
    `seq_len_cpu_ub` and `host_copies` (D2H copies issued in resolve_seq_lens_cpu,
    None where they cannot be counted)."""

    kind: str = "decode"  # "decode", "prefill", "mixed", "idle"
    expected_relay: dict = field(default_factory=dict)
    relay: Optional[dict] = None
    seq_len_cpu_ub: Optional[int] = None
    true_max_seq_len: int = 0
    host_copies: Optional[int] = None
    needs_cpu_seq_lens: bool = True
    _relay_snapshot: dict = field(default_factory=dict, repr=False, compare=False)


class RelayLoop(OverlapLoop):
    """OverlapLoop plus the output-token relay (see module doc).

    `future_map_cls` is a callable `(pool_size, device, spec) -> map`: a factory. `spec`
    is the example's spec mode (on, needs_cpu_seq_lens, debug_poison, topk,
    hidden_size). `resolve_forward_inputs(batch, future_map)` is SGLang's module-level
    function (or ours). `make_batch` / `make_draft` build the batch and draft input
    from keyword fields. `count_host_copies`, if set, is a context manager factory whose
    value is a list that collects the D2H copies issued inside it.
    """

    def __init__(self, pool_size: int, device="cpu", future_map_cls: Callable = None, *,
                 spec, resolve_forward_inputs: Callable, resolve_on: str = "schedule",
                 make_batch: Callable = SimpleNamespace, make_draft: Callable = SimpleNamespace,
                 count_host_copies: Optional[Callable] = None):
        if resolve_on not in RESOLVE_ON:
            raise ValueError(f"resolve_on must be one of {RESOLVE_ON}, got {resolve_on!r}")
        self.spec = spec
        self.resolve_forward_inputs = resolve_forward_inputs
        self.resolve_on = resolve_on
        self.make_batch = make_batch
        self.make_draft = make_draft
        self.count_host_copies = count_host_copies
        factory = future_map_cls

        def build(pool, device_, _algo):
            return factory(pool, device_, spec)

        super().__init__(pool_size, device=device, future_map_cls=build, spec_algo=spec)
        self._prefill: set[int] = set()  # admitted, no forward yet: input comes from the host
        self._generation: dict[int, int] = {}
        self._relayed: dict[int, Any] = {}  # oracle: what the last forward stashed per slot

    # --- requests --------------------------------------------------------------------

    def admit(self, slot: int, length: int) -> None:
        super().admit(slot, length)
        self._prefill.add(slot)
        self._generation[slot] = self._generation.get(slot, -1) + 1
        self._relayed.pop(slot, None)

    def free(self, slot: int) -> None:
        super().free(slot)
        self._prefill.discard(slot)
        self._relayed.pop(slot, None)

    def prefill_slots(self) -> list[int]:
        return sorted(self._prefill)

    def decode_slots(self) -> list[int]:
        """Live requests past their prefill: their input comes through the relay."""
        return [s for s in self.live_slots if s not in self._prefill]

    # --- one step --------------------------------------------------------------------

    def step(self, indices: Sequence[int], accept_lens: Sequence[int], spec: bool = True) -> RelayStepResult:
        """Prepare, resolve and launch one batch (empty: DP-idle). `spec` is ignored: the
        example's spec mode decides (decode batches are spec batches when it is on)."""
        indices, accept_lens = self._validate_step(indices, accept_lens, False)
        accept = dict(zip(indices, accept_lens))
        prefill = [i for i in indices if i in self._prefill]
        decode = [i for i in indices if i not in self._prefill]
        if self.spec.on and prefill and decode:
            raise ValueError("spec on: a batch is prefill-only or decode-only (SGLang's map "
                             "does not resolve spec extras of mixed batches)")
        order = prefill + decode
        accept_lens = [accept[i] for i in order]
        n = len(order)
        spec_batch = self.spec.on and bool(decode)
        kind = "idle" if not n else "mixed" if prefill and decode else "prefill" if prefill else "decode"

        seeds = sorted(self._pending_seeds.items())
        m = len(seeds)
        host_seq_lens = [self._host_lens[i] for i in order]
        prompts = {s: prompt_tokens(s, self._generation[s], self.oracle.lens[s]) for s in prefill}
        flat_prompt = [t for s in prefill for t in prompts[s]]
        expected = self.oracle.seq_lens(order)
        expected_relay = self._expected_relay(prefill, decode, flat_prompt, spec_batch)

        self._reserve_staging()
        self._stage(ROW_INDICES, order)
        self._stage(ROW_ACCEPT, accept_lens)
        self._stage(ROW_SEQ_LENS, host_seq_lens)
        self._stage(ROW_SEED_SLOTS, [s for s, _ in seeds])
        self._stage(ROW_SEED_LENS, [length for _, length in seeds])
        # The prefill tokens' pinned staging: fresh per step, never written after the
        # H2D that resolve_forward_inputs issues (the pinned allocator keeps it until then).
        prefill_cpu = None
        if prefill:
            prefill_cpu = torch.tensor(flat_prompt, dtype=torch.int64)
            if self.has_streams:
                prefill_cpu = prefill_cpu.pin_memory()

        host_copies = None
        with self._on(self.schedule_stream):
            self._write_fwd_inputs(n)
            seed_slots = self._upload(ROW_SEED_SLOTS, m)
            seed_lens = self._upload(ROW_SEED_LENS, m)
            seq_lens = None if spec_batch else self._upload(ROW_SEQ_LENS, n)
            self._release_staging()
            self._seed(seed_slots, seed_lens)
            rows = self.fwd_inputs[ROW_INDICES]
            batch = self.make_batch(
                device=self.device,
                reqs=[_Req(s, self.oracle.lens[s] + s % 3) for s in order],
                req_pool_indices=rows[:n],
                req_pool_indices_cpu=torch.tensor(order, dtype=torch.int64),
                enable_overlap=True, is_spec_v2=self.spec.on, spec_algorithm=self.spec,
                spec_info=self.make_draft(future_indices=rows[:n]) if spec_batch else None,
                prefill_input_ids_cpu=prefill_cpu,
                mix_running_indices=rows[len(prefill):n] if prefill and decode else None,
                input_ids=None, seq_lens=None, seq_lens_cpu=None, seq_lens_sum=None,
                seq_len_cpu_ub=None)
            if spec_batch:
                probe = self.count_host_copies() if self.count_host_copies else contextlib.nullcontext()
                with probe as copies:
                    self.future_map.resolve_seq_lens_cpu(batch)
                if copies is not None:
                    host_copies = len(copies)
            else:
                batch.seq_lens = seq_lens
                batch.seq_lens_cpu = torch.tensor(host_seq_lens, dtype=torch.int64)
                batch.seq_lens_sum = int(batch.seq_lens_cpu.sum())
            snapshot = batch.seq_lens.clone()
            relay_snapshot = {}
            if self.resolve_on == "schedule":
                relay_snapshot = self._resolve(batch)
            self._hand_off_inputs()

        with self._on(self.forward_stream):
            if self.resolve_on == "forward":
                if self.has_streams:
                    self.forward_stream.wait_stream(self.schedule_stream)
                relay_snapshot = self._resolve(batch)
            self._forward(batch, n, prefill, prompts, spec_batch)
        self._protect(batch)

        needs_cpu = getattr(self.spec, "needs_cpu_seq_lens", True) or not spec_batch
        self.oracle.advance(order, accept_lens)
        for i, a in zip(order, accept_lens):
            self._host_lens[i] += a
        self._pending_seeds.clear()
        self._advance_relay(prefill, decode, prompts, expected_relay)
        self._prefill.difference_update(prefill)

        result = RelayStepResult(
            step=self.steps, indices=order, accept_lens=accept_lens, spec=spec_batch,
            seq_lens_cpu=batch.seq_lens_cpu.tolist() if needs_cpu else None,
            seq_lens_sum=int(batch.seq_lens_sum) if needs_cpu else None,
            expected_seq_lens=expected, expected_sum=sum(expected),
            _seq_lens_snapshot=snapshot, kind=kind, expected_relay=expected_relay,
            seq_len_cpu_ub=None if needs_cpu else batch.seq_len_cpu_ub,
            true_max_seq_len=max(expected, default=0), host_copies=host_copies,
            needs_cpu_seq_lens=needs_cpu, _relay_snapshot=relay_snapshot)
        self._unsynced.append(result)
        self.steps += 1
        return result

    def synchronize(self) -> list:
        done = super().synchronize()
        for r in done:
            if isinstance(r, RelayStepResult):
                r.relay = {k: v.tolist() for k, v in r._relay_snapshot.items()}
                r._relay_snapshot = {}
        return done

    # --- pieces ------------------------------------------------------------------------

    def _resolve(self, batch) -> dict:
        """resolve_forward_inputs on the current stream; clones of what it resolved, taken
        on the same stream (FIFO after the gathers)."""
        self.resolve_forward_inputs(batch, self.future_map)
        out = {}
        if batch.input_ids is not None:
            out["input_ids"] = batch.input_ids.clone()
        draft = batch.spec_info
        if draft is not None:
            for name in EXTRAS:
                value = getattr(draft, name, None)
                if value is not None:
                    out[name] = value.clone()
        return out

    def _forward(self, batch, n: int, prefill: list, prompts: dict, spec_batch: bool) -> None:
        """Read inputs, publish, compute outputs from the resolved inputs, stash."""
        work = self.fwd_inputs[:, :n].clone()
        if self.has_streams:
            self.read_done.record(self.forward_stream)
        indices, accept = work[ROW_INDICES], work[ROW_ACCEPT]
        self._publish(indices, batch.seq_lens + accept, spec_batch)
        if n:
            if spec_batch:
                last = batch.spec_info.bonus_tokens
            else:
                ends, pos = [], 0
                for s in prefill:
                    pos += len(prompts[s])
                    ends.append(pos - 1)
                ends += range(pos, pos + n - len(prefill))
                last = batch.input_ids[torch.tensor(ends, dtype=torch.int64, device=self.device)]
            if self.spec.on:
                fields = draft_payload(last, self.spec.topk, self.spec.hidden_size)
                payload = self.make_draft(future_indices=indices, **fields)
            else:
                payload = next_token(last)
        else:
            payload = (self.make_draft(future_indices=indices, **{k: None for k in EXTRAS})
                       if self.spec.on else indices)  # DP idle: an empty stub
        self.future_map.stash(indices, payload)
        if self.has_streams:
            self.fwd_done.record(self.forward_stream)

    def _protect(self, batch) -> None:
        """Tensors the schedule stream allocated and the forward reads: keep their blocks
        from the schedule stream's next allocations until the forward has run."""
        if not self.has_streams:
            return
        batch.seq_lens.record_stream(self.forward_stream)
        if self.resolve_on == "schedule":
            if batch.input_ids is not None:
                batch.input_ids.record_stream(self.forward_stream)
            if batch.spec_info is not None and batch.spec_info.bonus_tokens is not None:
                batch.spec_info.bonus_tokens.record_stream(self.forward_stream)

    def _expected_relay(self, prefill, decode, flat_prompt, spec_batch) -> dict:
        if spec_batch:
            return {name: [self._relayed[s][name] for s in decode] for name in EXTRAS
                    if self._relayed[decode[0]][name] is not None}
        if not prefill and not decode:
            return {}
        if self.spec.on:  # a spec prefill batch: host tokens only
            return {"input_ids": flat_prompt}
        return {"input_ids": flat_prompt + [self._relayed[s] for s in decode]}

    def _advance_relay(self, prefill, decode, prompts, expected) -> None:
        """The oracle's view of what this forward stashed, per slot."""
        last = {s: prompts[s][-1] for s in prefill}
        for j, s in enumerate(decode):
            last[s] = expected["bonus_tokens"][j] if self.spec.on else self._relayed[s]
        for s, t in last.items():
            self._relayed[s] = (draft_payload(t, self.spec.topk, self.spec.hidden_size)
                                if self.spec.on else next_token(t))


__all__ = ["RelayLoop", "RelayStepResult", "ReqToTokenPool", "RESOLVE_ON", "VOCAB",
           "draft_payload", "next_token", "prompt_tokens"]
