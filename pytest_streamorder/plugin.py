"""The pytest plugin. Loading it must stay cheap: no torch import unless --streamorder."""

from __future__ import annotations


def pytest_addoption(parser):
    group = parser.getgroup("streamorder", "CUDA stream-ordering checks")
    group.addoption(
        "--streamorder",
        action="store_true",
        default=False,
        help="run tests on the virtual CUDA device and fail on stream-ordering races",
    )
