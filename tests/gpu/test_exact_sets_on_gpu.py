"""Exact memory on the real-GPU backend: the programs of tests/unit/test_sim_exact_sets.py
(disjoint index_put_ slots, even/odd slots, column halves, pinned rows, and their
one-shared-element twins), with and without injected delays. Skipped without CUDA.

Written without a GPU at hand: the lead runs it on the H200 after merging."""

from __future__ import annotations

import pytest
import torch

from tests.unit import test_sim_exact_sets as exact

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real CUDA device"),
]


def _run(program, seed=0, delays=False, **kw):
    from pytest_streamorder.gpu import cuda_backend

    delay = dict(delay_probability=1.0, fire_probability=1.0, delay_ms=0.3) if delays else \
        dict(delay_probability=0)
    with cuda_backend(seed=seed, raise_on_race=False, **delay) as be:
        result = program(**kw)
    return be, result


@pytest.mark.parametrize("delays", [False, True])
@pytest.mark.parametrize("what, program, kw", exact.CORRECT, ids=[c[0] for c in exact.CORRECT])
def test_disjoint_elements_are_silent(what, program, kw, delays):
    be, _ = _run(program, delays=delays, **kw)
    assert be.races == [], "\n\n".join(str(r) for r in be.races)
    assert be.hb.unresolved == 0  # every index value was staged and read


@pytest.mark.parametrize("what, program, kw", exact.BROKEN, ids=[c[0] for c in exact.BROKEN])
def test_one_shared_element_is_a_race(what, program, kw):
    be, _ = _run(program, **kw)
    assert len(be.races) == 1, "\n\n".join(str(r) for r in be.races)


def test_values_and_the_ring():
    be, values = _run(exact.publish_slots)
    assert values == [0, 10, 11, 0, 0, 20, 21, 0]
    assert be._ring is not None and be._ring.staged >= 2 and not be._ring.entries


@pytest.mark.parametrize("op", ["index_copy_", "scatter_", "masked_fill_", "put_"])
@pytest.mark.parametrize("overlap", [False, True])
def test_indexed_writes_touch_only_their_elements(op, overlap):
    def program():
        x = torch.zeros(4, 4, device="cuda")
        torch.cuda.synchronize()
        s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
        for stream, rows in zip((s1, s2), ([0, 1], [1, 3] if overlap else [2, 3])):
            with torch.cuda.stream(stream):
                exact._indexed_write(op, x, rows)
        torch.cuda.synchronize()
        return x.tolist()

    be, _ = _run(program)
    assert len(be.races) == int(overlap), op
