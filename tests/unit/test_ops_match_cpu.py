"""Differential check: common ops on the virtual device give what the CPU gives (values,
shape, dtype), run under the delay policy so that every result is read after queued work
ran late. Ops are the kinds model and serving code uses: views and in-place writes
through them, indexing forms, reductions, sorting, scatter/gather, type promotion,
composites that fill an empty tensor (F.one_hot), out= tensors, nn.functional layers."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import pytest_streamorder as so


def _inputs(dev):
    g = torch.Generator().manual_seed(0)
    f = torch.randn(4, 6, generator=g)
    values = dict(f=f, i=torch.randint(0, 10, (4, 6), generator=g),
                  b=torch.rand(4, 6, generator=g) > 0.5, idx=torch.tensor([2, 0, 3]),
                  h=f.half(), v=f[0].clone())
    return {k: v.to(dev) for k, v in values.items()}


def _write_through_slice(t):
    x = t["f"].clone()
    x[1:3].mul_(2)
    return x


def _write_through_transpose(t):
    x = t["f"].clone()
    x.transpose(0, 1)[0] += 100
    return x


def _t_then_add_(t):
    x = t["f"].clone()
    x.t_()
    return x.add_(1)


def _masked_setitem(t):
    x = t["f"].clone()
    x[t["b"]] = 0
    return x


def _slice_setitem_from_itself(t):
    x = t["i"].clone()
    x[:, 1:4] = x[:, :3] * 2
    return x


def _shifted_copy(t):
    x = t["f"].clone()
    x[1:].copy_(x[:-1].clone())
    return x


def _index_put_accumulate(t):
    x = torch.zeros(5, device=t["f"].device)
    return x.index_put_((t["idx"],), torch.ones(3, device=x.device), accumulate=True)


def _index_add_(t):
    x = torch.zeros(5, 6, device=t["f"].device)
    return x.index_add_(0, t["idx"], t["f"][:3])


def _unsqueeze_squeeze_(t):
    x = t["f"].clone()
    x.unsqueeze_(0).mul_(2)
    return x.squeeze_(0)


def _out_into_other_half(t):
    x = t["f"].clone()
    torch.mul(x[:, :3], 2, out=x[:, 3:])
    return x


def _out_empty(t):
    out = torch.empty(0, device=t["f"].device)
    torch.cumsum(t["f"], 1, out=out)
    return out


def _sort(t):
    v, i = t["f"].sort(dim=1, descending=True)
    return torch.cat([v, i.float()], 1)


def _max_dim(t):
    v, i = t["f"].max(1)
    return torch.cat([v, i.float()])


def _linear(t):
    torch.manual_seed(0)
    return torch.nn.Linear(6, 3).to(t["f"].device)(t["f"])


def _conv1d(t):
    torch.manual_seed(0)
    return F.conv1d(t["f"][None], torch.randn(2, 4, 3).to(t["f"].device))


def _rms_norm(t):
    x = t["f"]
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def _rotate_half(t):
    x1, x2 = t["f"][..., :3], t["f"][..., 3:]
    return torch.cat((-x2, x1), -1) * 0.5 + t["f"]


def _silu_and_mul(t):
    a, b = t["f"].chunk(2, -1)
    return F.silu(a) * b


OPS = {
    "write through a slice": _write_through_slice,
    "write through a transpose": _write_through_transpose,
    "t_ then add_": _t_then_add_,
    "masked setitem": _masked_setitem,
    "slice setitem from itself": _slice_setitem_from_itself,
    "shifted copy_": _shifted_copy,
    "index_put_ accumulate": _index_put_accumulate,
    "index_add_": _index_add_,
    "unsqueeze_ squeeze_": _unsqueeze_squeeze_,
    "out= into the other half": _out_into_other_half,
    "out= empty": _out_empty,
    "expand add": lambda t: t["v"].expand(4, 6) + t["f"],
    "as_strided": lambda t: t["f"].as_strided((3, 3), (2, 1), 1).clone(),
    "view t contiguous": lambda t: t["f"].view(2, 12).t().contiguous().view(-1)[::3],
    "split cat": lambda t: torch.cat(list(reversed(t["f"].split([1, 2, 3], dim=1))), 1),
    "chunk stack": lambda t: torch.stack(t["f"].chunk(2, 0), 0),
    "unbind sums": lambda t: torch.stack([u.sum() for u in t["f"].unbind(0)]),
    "sort": _sort,
    "topk indices": lambda t: t["f"].topk(2, dim=1).indices,
    "argsort stable": lambda t: torch.argsort(t["i"], dim=1, stable=True),
    "max over dim": _max_dim,
    "cumsum": lambda t: t["i"].cumsum(0),
    "cummax": lambda t: t["f"].cummax(1).values,
    "where scalar": lambda t: torch.where(t["b"], t["f"], 0.5),
    "masked_fill": lambda t: t["f"].masked_fill(t["b"], -1),
    "masked_select": lambda t: t["f"].masked_select(t["b"]),
    "nonzero": lambda t: t["b"].nonzero(),
    "unique": lambda t: torch.unique(t["i"]),
    "boolean index": lambda t: t["f"][t["b"]],
    "list index": lambda t: t["f"][[0, 2, 3]],
    "column list index": lambda t: t["f"][:, [5, 3, 1]],
    "gather": lambda t: t["f"].gather(1, t["i"].clamp(max=5)),
    "scatter_add": lambda t: torch.zeros(4, 10, device=t["f"].device).scatter_add(1, t["i"], t["f"]),
    "index_select": lambda t: t["f"].index_select(0, t["idx"]),
    "repeat_interleave": lambda t: t["idx"].repeat_interleave(2),
    "searchsorted": lambda t: torch.searchsorted(t["f"][0].sort().values, t["f"][1]),
    "bincount": lambda t: torch.bincount(t["idx"], minlength=5),
    "one_hot": lambda t: F.one_hot(t["idx"], 5),
    "half math": lambda t: (t["h"] * 3 + 1).float(),
    "type promotion": lambda t: t["i"] * 0.5 + t["b"],
    "floor division": lambda t: torch.div(t["i"], 3, rounding_mode="floor"),
    "bitwise": lambda t: (t["i"] & 3) | (t["i"] >> 1),
    "view as int32": lambda t: t["f"].view(torch.int32),
    "to int64": lambda t: t["f"].to(torch.int64),
    "mean over dims": lambda t: t["f"].mean((0, 1), keepdim=True),
    "var": lambda t: t["f"].var(1),
    "any all": lambda t: torch.stack([t["b"].any(), t["b"].all()]),
    "mm with t": lambda t: t["f"] @ t["f"].t(),
    "bmm": lambda t: torch.bmm(t["f"].view(2, 2, 6), t["f"].view(2, 2, 6).transpose(1, 2)),
    "einsum": lambda t: torch.einsum("ij,kj->ik", t["f"], t["f"]),
    "softmax": lambda t: torch.softmax(t["f"], -1),
    "layer_norm": lambda t: F.layer_norm(t["f"], (6,)),
    "embedding": lambda t: F.embedding(t["idx"], t["f"]),
    "linear": _linear,
    "conv1d": _conv1d,
    "pad": lambda t: F.pad(t["f"], (1, 2)),
    "interpolate": lambda t: F.interpolate(t["f"][None, None], scale_factor=2),
    "rms norm": _rms_norm,
    "rotate half": _rotate_half,
    "silu and mul": _silu_and_mul,
    "flip roll": lambda t: t["f"].flip(0).roll(2, 1),
    "tril": lambda t: t["f"].tril(),
    "item back to a tensor": lambda t: torch.tensor([t["f"].sum().item()], device=t["f"].device),
    "tolist back to a tensor": lambda t: torch.tensor(t["i"].tolist(), device=t["f"].device),
    "arange times a row": lambda t: torch.arange(5, device=t["f"].device) * t["f"][0, :5],
}


@pytest.mark.parametrize("name", list(OPS))
def test_the_device_computes_what_the_cpu_computes(name):
    op = OPS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = op(_inputs("cpu"))
        with so.virtual_device(seed=0, policy="delay") as vd:
            got = op(_inputs("cuda"))
            assert got.device.type == "cuda"
            got = got.cpu()
    assert vd.races == []
    assert (got.shape, got.dtype) == (expected.shape, expected.dtype)
    if expected.is_floating_point():
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, equal_nan=True)
    else:
        assert torch.equal(got, expected)
