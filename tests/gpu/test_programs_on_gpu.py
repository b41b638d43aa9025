"""The correct twins of tests/cuda_programs.py on a real GPU: they return the right
values, as written and with torch.cuda._sleep at every delay site. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from tests import cuda_programs as programs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real CUDA device"),
]


@pytest.mark.parametrize("delay", [0, 20_000_000], ids=["as-written", "with-sleeps"])
@pytest.mark.parametrize("name", list(programs.TWINS))
def test_twin_is_correct_on_gpu(name, delay):
    programs.set_delay(delay)
    try:
        for _ in range(3):
            observed, expected = programs.TWINS[name]()
            assert observed == expected
    finally:
        programs.set_delay(0)
