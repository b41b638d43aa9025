"""The dynamo import hook (sim/lazy_dynamo.py) runs a wrapped import with the device's
patches undone, exactly as Patches.undo would undo them, and redoes them after."""

import types

from pytest_streamorder.sim.lazy_dynamo import DynamoImportHook
from pytest_streamorder.sim.patching import Patches


def test_originals_undo_patches_exactly_and_redo_them():
    owner = types.SimpleNamespace(kept="original")
    patches = Patches()
    patches.set(owner, "kept", "stand-in")
    patches.set(owner, "added", "stand-in")  # absent before the device patched it
    hook = DynamoImportHook(patches.entries)
    with hook.originals():
        assert owner.kept == "original"
        assert not hasattr(owner, "added")  # absent again, not set to a sentinel
    assert (owner.kept, owner.added) == ("stand-in", "stand-in")
    patches.undo()
    assert owner.kept == "original" and not hasattr(owner, "added")
