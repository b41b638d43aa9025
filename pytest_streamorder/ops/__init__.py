"""What an op does to memory, described once for both backends (sim/ and gpu/).

- schema.py: an aten op's read/write sets and output aliasing, from its schema;
  whether it is a view, allocates only, touches only metadata, or makes the host wait.
- catalog.py: the facts a schema does not state (which ops sync, allocate only, copy).
- ranges.py: the bytes of its storage a tensor touches, exactly (strided views count).
- indexed.py: ops whose index values name the elements they touch (index_put_, ...).
- host.py: what a host-side torch call does to pinned tensors among its arguments.
- pinned.py: the registry of pinned host memory, keyed by storage.
- frames.py: which stack frames are the user's; naming.py: names from the source line.
- limit.py: the per-run op limit.

Imports torch and model/, never sim/ or gpu/. Importing this package imports nothing.
"""
