"""Host threads, for both backends: the one runtime lock, and a per-thread setup run in
every thread other than the one that entered the backend.

torch's function and dispatch modes live on per-thread stacks, so a backend's modes,
pushed by the thread that entered it, do not see a worker thread's torch calls. While a
backend is active, `install(setup)` makes sure `setup()` (which pushes the backend's
modes in the calling thread; it must be idempotent and must not raise) runs

- in every thread started from then on, before its run() (Thread._bootstrap_inner is
  wrapped, so Thread subclasses that override run() are covered too), and
- before every task of a concurrent.futures.ThreadPoolExecutor, also in workers started
  before the backend became active (a pool built in a fixture);

and the backends call it themselves (`ensure()`) at the entry points they own, for any
other thread that predates them. `uninstall(setup)` restores threading exactly.

Torch-free; imported only by a backend as it starts.
"""

from __future__ import annotations

import functools
import threading

# The runtime lock: every entry point of a backend (an op, a stream or event call, an
# allocator free from a garbage-collected tensor, a trace callback) holds it, so the
# scheduler, the model and the allocator, which are plain Python structures, see one
# call at a time. It is re-entrant: a device call made inside another on the same thread
# (an aten op issued by a function-mode handler, a free triggered while an op runs) goes
# through.
#
# No deadlock: a thread holding it never waits for another thread. A device sync does not
# wait for a stream to be run by someone else: the syncing thread runs the queued items
# itself (scheduling.Scheduler.run_until), and items are CPU closures that take no lock.
# So the only waits while it is held are for the lock itself, whose holder is always
# making progress, and the wait-for graph has no cycle. (Code run under it that blocks on
# another thread would break this: a custom kernel's cpu_impl must not wait for another
# thread; on a real GPU, a collective that waits for a peer thread's call would.)
RUNTIME_LOCK = threading.RLock()


def locked(fn):
    """Run `fn` holding the runtime lock."""
    @functools.wraps(fn)
    def under_lock(*args, **kwargs):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        with RUNTIME_LOCK:
            return fn(*args, **kwargs)
    return under_lock


_setups: list = []  # what to run in each thread, in install order
_spawns: list = []  # what to run in a thread that starts a thread or submits pool work
_saved: dict = {}  # (owner, name) -> the original, while installed


def ensure() -> None:
    """Run the installed setups in the calling thread (each is idempotent)."""
    for setup in tuple(_setups):
        setup()


def _bootstrap_inner(original):
    def bootstrap(self):
        run = self.run

        def run_after_setup(*args, **kwargs):
            ensure()  # in the new thread, after start() returned in the parent
            return run(*args, **kwargs)

        self.run = run_after_setup
        return original(self)
    return bootstrap


def _work_item_run(original):
    def run(self):
        ensure()
        return original(self)
    return run


def _spawning(original):
    def spawn(self, *args, **kwargs):
        for _setup, hook in tuple(_spawns):
            hook()
        return original(self, *args, **kwargs)
    return spawn


def _targets():
    import concurrent.futures.thread as pool

    return ((threading.Thread, "_bootstrap_inner", _bootstrap_inner),
            (pool._WorkItem, "run", _work_item_run),
            (threading.Thread, "start", _spawning),
            (pool.ThreadPoolExecutor, "submit", _spawning))


def install(setup, on_spawn=None) -> None:
    """Run `setup` in every thread that starts, or runs a pool task, until uninstall;
    and `on_spawn()` (if given) in the thread that starts it or submits the task, first."""
    if setup in _setups:
        return
    _setups.append(setup)
    if on_spawn is not None:
        _spawns.append((setup, on_spawn))
    if not _saved:
        for owner, name, wrap in _targets():
            original = owner.__dict__[name]
            _saved[(owner, name)] = original
            setattr(owner, name, wrap(original))


def uninstall(setup) -> None:
    """Stop running `setup`; with no setups left, threading is exactly as before."""
    if setup in _setups:
        _setups.remove(setup)
    _spawns[:] = [entry for entry in _spawns if entry[0] is not setup]
    if not _setups:
        for (owner, name), original in _saved.items():
            setattr(owner, name, original)
        _saved.clear()
