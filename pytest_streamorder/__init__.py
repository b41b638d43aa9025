"""pytest-streamorder: find CUDA stream-ordering bugs in PyTorch code without a GPU.

Importing this package imports no torch; the virtual device loads it on first use.
"""

__version__ = "0.1.0"
