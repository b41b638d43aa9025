"""What an op's schema does not say: which ops allocate only, which make the host wait,
which copy between host and device, which touch metadata only.

Checked against CUDA's behaviour in PyTorch (torch 2.13): an op syncs the host with its
stream when it returns a value to Python (item, equal, is_nonzero) or when its output
shape depends on device data (nonzero, masked_select, unique, bincount, ...). Indexing
syncs only with a boolean (or uint8) mask: a long index gives an output shaped like the
index and launches without a sync; a mask is turned into indices by `nonzero` first.
"""

from __future__ import annotations

import torch

aten = torch.ops.aten

# Ops that only allocate: their output is uninitialised memory, no kernel runs.
EMPTY_OPS = frozenset({
    aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
    aten.new_empty.default, aten.new_empty_strided.default,
})

# Ops that hand a device value to the host: the host waits for the current stream.
# (Listed because some of their names look like metadata queries: is_nonzero.)
RETURNS_DEVICE_VALUE = frozenset({
    aten._local_scalar_dense.default, aten.item.default, aten.equal.default,
    aten.is_nonzero.default,
})

# Ops whose output shape depends on device data, whatever their arguments: CUDA copies
# the size to the host and waits for the current stream.
DATA_DEPENDENT_SHAPE = frozenset({
    aten.nonzero.default, aten.masked_select.default, aten.bincount.default,
    aten._unique.default, aten._unique2.default, aten.unique_consecutive.default,
    aten.unique_dim.default, aten.unique_dim_consecutive.default,
})

# Ops that sync only for some arguments: indexing with a boolean/uint8 mask (the mask
# goes through nonzero), repeat_interleave without output_size (it sums the repeats).
MASK_INDEXED = frozenset({
    aten.index.Tensor, aten.index_put_.default, aten.index_put.default,
    aten._index_put_impl_.default,
})
SIZED_BY_DATA_UNLESS_GIVEN = frozenset({aten.repeat_interleave.Tensor})

# Ops that copy between host and device (a CPU argument is not an error for them).
COPY_OPS = frozenset({aten.copy_.default, aten._to_copy.default})

# aten ops that return no tensor and only read a tensor's metadata start with these.
METADATA_PREFIXES = ("is_", "sym_", "_nested", "size", "stride", "numel", "dim",
                     "_has_", "_version", "output_nr", "_is_")

# Python-level Tensor methods and functions that read no tensor data (for host calls on
# pinned tensors: they are neither reads nor writes).
HOST_METADATA_FUNCS = frozenset({
    "size", "stride", "dim", "numel", "nelement", "ndimension", "storage_offset",
    "element_size", "data_ptr", "untyped_storage", "storage", "_typed_storage", "is_pinned",
    "is_contiguous", "is_complex", "is_floating_point", "is_signed", "__len__", "__hash__",
    "get_device", "type", "dim_order", "is_set_to", "is_shared", "record_stream", "__get__",
    "__del__", "_is_view", "is_inference", "__dlpack_device__",
})
