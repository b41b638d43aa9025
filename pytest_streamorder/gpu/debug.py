"""Debugging switches of the GPU backend (comma list in STREAMORDER_CUDA_DEBUG), used to
bisect crashes: flocals: name streams/events by scanning the user's frame locals (off: by
the source line that created them); weakevents: weak map of torch.cuda.Event objects;
evdelete: the event-deletion trace callback; nofree: no allocator-free callback;
nofunction: no host-access function mode; nocallbacks: no GPU trace callbacks at all."""

from __future__ import annotations

import os

DEBUG = frozenset(filter(None, os.environ.get("STREAMORDER_CUDA_DEBUG", "").split(",")))
