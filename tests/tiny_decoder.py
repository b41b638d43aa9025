"""A tiny transformer decoder and a two-stream decode loop, written the way serving
engines write them, in plain torch (no pytest-streamorder): the same code runs on the
CPU (the reference), on the virtual device and on a real GPU.

Every op of a real decode step is here: embedding, RMSNorm and LayerNorm, linear layers,
rotary embedding, attention through F.scaled_dot_product_attention and by hand (softmax,
`torch.where(mask, t, 0.0)`), a KV cache in token slots (index_put_ writes the new slot,
index_select gathers a request's slots), greedy argmax, and top-k/top-p sampling
(topk, sort, cumsum, multinomial with a generator).

The loop overlaps like SGLang's: a schedule stream prepares step n+1's inputs in static
device buffers while the forward stream runs step n. Two edges make it correct, and each
broken twin drops one: the forward stream waits for `inputs_ready` before reading the
inputs (RAW), and the schedule stream waits for `forward_done` before it reads step n's
tokens and rewrites the input buffers (WAR).

With `serving=True` the loop has what a serving engine adds to that: the forward pass is
captured once into a CUDA graph (warm-up on a side stream, capture on the forward
stream) and replayed each step, reading the static input buffers; the slot arithmetic
is a `torch.compile`d helper; the logits are scaled in place by a custom op registered
through `torch.library` (`tiny_decoder::scale_logits_`). The WAR edge then guards the
graph's static inputs, SGLang's missing barrier before its graph replays.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, DIM, HEADS, LAYERS, MAX_LEN = 32, 16, 2, 2, 16


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (the half-split form)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, attn: str):
        super().__init__()
        self.attn = attn
        self.qkv = nn.Linear(DIM, 3 * DIM, bias=False)
        self.out = nn.Linear(DIM, DIM, bias=False)

    def forward(self, x, cos, sin, k_cache, v_cache, out_loc, slots, valid):
        b = x.shape[0]
        hd = DIM // HEADS
        q, k, v = self.qkv(x).view(b, 3, HEADS, hd).unbind(1)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        k_cache.index_put_((out_loc,), k)             # this token's KV slot
        v_cache.index_put_((out_loc,), v)
        keys = k_cache.index_select(0, slots.flatten()).view(b, -1, HEADS, hd).transpose(1, 2)
        vals = v_cache.index_select(0, slots.flatten()).view(b, -1, HEADS, hd).transpose(1, 2)
        q = q.unsqueeze(2)                            # (b, heads, 1, hd)
        if self.attn == "sdpa":
            o = F.scaled_dot_product_attention(q, keys, vals, attn_mask=valid[:, None, None, :])
        else:
            scores = (q @ keys.transpose(-1, -2)) / math.sqrt(hd)
            scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            probs = torch.where(valid[:, None, None, :], probs, 0.0)
            o = probs @ vals
        return self.out(o.reshape(b, DIM))


class Block(nn.Module):
    def __init__(self, attn: str):
        super().__init__()
        self.norm1 = nn.RMSNorm(DIM, eps=1e-6)
        self.attn = Attention(attn)
        self.norm2 = nn.RMSNorm(DIM, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.SiLU(), nn.Linear(2 * DIM, DIM))

    def forward(self, x, cos, sin, k_cache, v_cache, out_loc, slots, valid):
        x = x + self.attn(self.norm1(x), cos, sin, k_cache, v_cache, out_loc, slots, valid)
        return x + self.mlp(self.norm2(x))


class TinyDecoder(nn.Module):
    def __init__(self, attn: str = "sdpa"):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(Block(attn) for _ in range(LAYERS))
        self.norm = nn.LayerNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)
        hd = DIM // HEADS
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        angles = torch.outer(torch.arange(MAX_LEN, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", torch.cat((angles, angles), -1).cos(), persistent=False)
        self.register_buffer("sin", torch.cat((angles, angles), -1).sin(), persistent=False)

    def forward(self, ids, positions, cache, out_loc, slots, valid):
        x = self.embed(ids)
        cos = self.cos[positions].unsqueeze(1)        # (b, 1, hd): broadcast over heads
        sin = self.sin[positions].unsqueeze(1)
        for block, (k_cache, v_cache) in zip(self.blocks, cache):
            x = block(x, cos, sin, k_cache, v_cache, out_loc, slots, valid)
        return self.lm_head(self.norm(x))


@torch.library.custom_op("tiny_decoder::scale_logits_", mutates_args=("logits",))
def scale_logits_(logits: torch.Tensor, inv_temperature: float) -> None:
    """A custom op writing its argument in place (the shape of sgl-kernel's ops)."""
    logits.mul_(inv_temperature)


@scale_logits_.register_fake
def _(logits, inv_temperature):
    return None


def slot_arithmetic(base: torch.Tensor, positions: torch.Tensor):
    """This token's KV slot, every slot of its request, and which of them are valid."""
    out_loc = base + positions
    slots = base[:, None] + torch.arange(MAX_LEN, device=base.device)
    valid = torch.arange(MAX_LEN, device=base.device) <= positions[:, None]
    return out_loc, slots, valid


compiled_slot_arithmetic = torch.compile(slot_arithmetic, dynamic=False)
INV_TEMPERATURE = 0.5  # argmax does not change: the tokens stay the CPU's


def new_cache(batch: int, device) -> list:
    """Per layer, K and V caches of batch * MAX_LEN token slots (slot = b * MAX_LEN + pos)."""
    hd = DIM // HEADS
    return [(torch.zeros(batch * MAX_LEN, HEADS, hd, device=device),
             torch.zeros(batch * MAX_LEN, HEADS, hd, device=device)) for _ in range(LAYERS)]


def sample(logits: torch.Tensor, generator, top_k: int = 8, top_p: float = 0.9):
    """Top-k then top-p sampling; returns (tokens, the filtered probabilities)."""
    values, indices = torch.topk(logits, top_k, dim=-1)
    sorted_values, order = torch.sort(values, dim=-1, descending=True)
    probs = torch.softmax(sorted_values, dim=-1)
    cumulative = torch.cumsum(probs, dim=-1)
    keep = (cumulative - probs) < top_p                # the first one is always kept
    probs = torch.where(keep, probs, 0.0)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    filtered = torch.zeros_like(logits).scatter_(-1, indices.gather(-1, order), probs)
    tokens = torch.multinomial(filtered, 1, generator=generator).squeeze(-1)
    return tokens, filtered


class DecodeLoop:
    """Greedy decoding of `batch` requests for `steps` steps, overlapped on two streams
    when the device is CUDA. wait_inputs / wait_forward: the two edges (see the module)."""

    def __init__(self, model: TinyDecoder, start_tokens: list, device,
                 wait_inputs: bool = True, wait_forward: bool = True, serving: bool = False):
        self.model, self.device = model, torch.device(device)
        self.serving = serving
        self.batch = len(start_tokens)
        self.wait_inputs, self.wait_forward = wait_inputs, wait_forward
        self.cache = new_cache(self.batch, device)
        # Static input buffers (a CUDA graph would read these), rewritten every step.
        self.input_ids = torch.zeros(self.batch, dtype=torch.long, device=device)
        self.positions = torch.zeros(self.batch, dtype=torch.long, device=device)
        self.next_tokens = torch.tensor(start_tokens, dtype=torch.long, device=device)
        self.base = torch.arange(self.batch, device=device) * MAX_LEN
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.schedule_stream = torch.cuda.Stream()
            self.forward_stream = torch.cuda.Stream()
            self.inputs_ready = torch.cuda.Event()
            self.forward_done = torch.cuda.Event()
            # Everything above was made on the current stream.
            self.schedule_stream.wait_stream(torch.cuda.current_stream())
            self.forward_stream.wait_stream(torch.cuda.current_stream())
        self.graph = None
        if self.cuda and serving:
            self._capture()

    def _forward(self) -> torch.Tensor:
        """The forward pass on the static inputs; sets `next_tokens`, returns the logits."""
        arithmetic = compiled_slot_arithmetic if self.serving and self.cuda else slot_arithmetic
        out_loc, slots, valid = arithmetic(self.base, self.positions)
        logits = self.model(self.input_ids, self.positions, self.cache, out_loc, slots, valid)
        if self.serving:
            scale_logits_(logits, INV_TEMPERATURE)
        self.next_tokens = torch.argmax(logits, dim=-1)
        return logits

    def _capture(self) -> None:
        """Warm up on a side stream (the documented pattern), then capture the forward
        pass on the forward stream; the outputs are the graph's static tensors. Neither
        writes anything a replay does not write again first (the KV slot at position 0)."""
        start_tokens = self.next_tokens  # _forward() sets next_tokens: step 0 needs these
        warmup = torch.cuda.Stream()
        warmup.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(warmup):
            self._forward()
        self.forward_stream.wait_stream(warmup)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=self.forward_stream):
            self.static_logits = self._forward()
        self.static_tokens, self.next_tokens = self.next_tokens, start_tokens

    def _on(self, stream):
        return torch.cuda.stream(stream) if self.cuda else contextlib.nullcontext()

    def step(self, pos: int) -> torch.Tensor:
        """One decode step at position `pos`; returns the logits (on the forward stream)."""
        with self._on(self.schedule_stream if self.cuda else None):
            if self.cuda and self.wait_forward:
                self.schedule_stream.wait_event(self.forward_done)
            self.input_ids.copy_(self.next_tokens)     # step n's output, step n+1's input
            self.positions.fill_(pos)
            if self.cuda:
                self.inputs_ready.record()
        if self.cuda and self.wait_inputs:
            self.forward_stream.wait_event(self.inputs_ready)
        with self._on(self.forward_stream if self.cuda else None):
            if self.graph is not None:
                self.graph.replay()
                logits = self.static_logits.clone()
                # The graph's output is rewritten by the next replay: keep a copy.
                self.next_tokens = self.static_tokens.clone()
            else:
                logits = self._forward()
            if self.cuda:
                self.forward_done.record()
        return logits

    def run(self, steps: int) -> tuple[list, torch.Tensor]:
        """(the tokens of every step as host lists, the last logits on the host). The host
        does not wait between steps: it reads all tokens at the end."""
        history = []
        for pos in range(steps):
            logits = self.step(pos)
            history.append(self.next_tokens)
        if self.cuda:
            torch.cuda.current_stream().wait_stream(self.forward_stream)
        return torch.stack(history).tolist(), logits.cpu()
