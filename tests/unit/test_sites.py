"""Where a call came from (model/site.py, ops/frames.py): a capture never fails, however
shallow the stack. A tensor's __del__ runs wherever its last reference went, also with
no Python frame below it (an exception's traceback cleared at the top of the
interpreter); a site that raised there lost the free itself ("Exception ignored in
VirtualStorage.__del__": the block never went back to its pool)."""

import threading

from pytest_streamorder.model import Site
from pytest_streamorder.ops.frames import user_location_here, user_pyframe


def _capture():
    return Site.here(0)


def test_a_capture_starts_at_the_caller():
    (first, second, *_) = _capture().lines()
    assert first.endswith(" in _capture")
    assert second.endswith(" in test_a_capture_starts_at_the_caller")


def test_a_capture_skipping_more_frames_than_the_stack_has_is_empty():
    assert Site.here(10_000).lines() == []
    assert user_pyframe(10_000) is None


def test_a_capture_at_the_bottom_of_a_thread_keeps_the_frames_there():
    seen = []
    thread = threading.Thread(target=lambda: seen.append((Site.here(0).lines(),
                                                          user_location_here(0).lines())))
    thread.start()
    thread.join()
    (here, location), = seen
    assert "in <lambda>" in here[0] and len(here) <= 4  # the lambda, then threading's own
    assert location and "in <lambda>" in location[0]
