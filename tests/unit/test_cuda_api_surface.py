"""The torch.cuda API surface a GPU test suite touches, on the virtual device (issue 12,
item 5): modelled where it means something for ordering or memory, harmless where it
means nothing, refused by name (NotModelledError) otherwise; never a raw CPU-build error."""

import io
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import pytest_streamorder as so
from pytest_streamorder.errors import NotModelledError
from pytest_streamorder.sim import cuda_net, gpu_identity

pytestmark = pytest.mark.no_streamorder  # these tests open their own virtual devices

SLEEP = 10_000_000  # cycles: a long kernel


@pytest.fixture
def lazy():
    # lazy: queued work runs only when the host waits, so "still in flight" is certain
    with so.virtual_device(policy="lazy") as vd:
        yield vd


# --- memory statistics from the allocator model ----------------------------------------

def test_memory_allocated_tracks_rounded_sizes_in_both_spellings(lazy):
    before = torch.cuda.memory_allocated()
    x = torch.empty(1000, device="cuda")  # 4000 bytes -> 4096 (512-byte rounding)
    assert torch.cuda.memory_allocated() - before == 4096
    assert torch.cuda.memory.memory_allocated() - before == 4096  # the submodule's binding
    del x
    assert torch.cuda.memory_allocated() == before


def test_peak_and_reset(lazy):
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    x = torch.empty(2 * 2**20, device="cuda")
    del x
    assert torch.cuda.max_memory_allocated() - base == 8 * 2**20
    torch.cuda.reset_peak_memory_stats()
    assert torch.cuda.max_memory_allocated() == torch.cuda.memory_allocated()


def test_memory_stats_keys_agree(lazy):
    x = torch.empty(5 * 1024, device="cuda")  # 20 KiB: small pool
    stats = torch.cuda.memory_stats()
    assert stats["allocated_bytes.all.current"] == torch.cuda.memory_allocated() == 20480
    assert stats["allocated_bytes.small_pool.current"] == 20480
    assert stats["allocation.all.current"] == 1
    assert stats["requested_bytes.all.current"] == 20480
    assert stats["reserved_bytes.all.current"] == torch.cuda.memory_reserved() == 20480
    assert torch.accelerator.memory_allocated() == 20480
    assert "Allocated memory" in torch.cuda.memory_summary()
    del x


def test_mem_get_info_and_empty_cache(lazy):
    free0, total = torch.cuda.mem_get_info()
    assert total == gpu_identity.TOTAL_MEMORY and free0 == total
    keep = torch.full((4096,), 2.0, device="cuda")
    y = torch.empty(8192, device="cuda")
    del y
    assert torch.cuda.memory_reserved() == 3 * 16384 // 1  # 16 KiB + 32 KiB blocks
    assert torch.cuda.mem_get_info()[0] == total - torch.cuda.memory_reserved()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    assert torch.cuda.memory_reserved() == 16384  # the cached block went, the live one stayed
    assert keep.sum().item() == 8192.0


def test_empty_cache_is_not_a_sync():
    # empty_cache releases cached blocks; it orders nothing (CUDA's cudaFree may sync the
    # device in practice, but no API promises it): a read it "ordered" is still a race
    with pytest.raises(so.StreamRaceError):
        with so.virtual_device(policy="lazy"):
            side = torch.cuda.Stream()
            with torch.cuda.stream(side):
                x = torch.ones(8, device="cuda")
            torch.cuda.empty_cache()
            x.sum().item()


# --- the pinned host caching allocator ---------------------------------------------------

def test_pinned_block_reused_when_no_copy_is_pending(lazy):
    t = torch.full((37,), 1.0).pin_memory()
    block = t.data_ptr()
    del t
    t = torch.full((37,), 1.0).pin_memory()
    assert t.data_ptr() == block
    assert t.is_pinned() and t.sum().item() == 37.0


def test_pinned_block_not_reused_while_h2d_copy_in_flight(lazy):
    t = torch.full((37,), 1.0).pin_memory()
    block = t.data_ptr()
    dst = torch.zeros(37, device="cuda")
    torch.cuda._sleep(SLEEP)
    dst.copy_(t, non_blocking=True)
    del t
    t2 = torch.empty(37, pin_memory=True)
    assert t2.data_ptr() != block, "reused while the copy still reads it"
    torch.cuda.synchronize()
    t3 = torch.empty(37, pin_memory=True)
    assert t3.data_ptr() == block, "not reused after the copy ran"
    assert dst.sum().item() == 37.0


def test_pinned_block_of_d2h_copy_not_reused_in_flight(lazy):
    src = torch.arange(100.0, device="cuda")
    torch.cuda._sleep(SLEEP)
    out = src.to("cpu", non_blocking=True)
    assert out.is_pinned()
    block = out.data_ptr()
    del out
    assert torch.empty(100, pin_memory=True).data_ptr() != block


@pytest.mark.parametrize("policy", ["eager", "random", "delay"])
def test_pinned_block_not_reused_before_the_copy_completes_in_virtual_time(policy):
    """Under eager the copy has already *run* at launch, but behind a 50 ms sleep it cannot
    have *completed* when the host allocates again: reuse follows the virtual clock, as a
    CUDA event query would."""
    with so.virtual_device(policy=policy, seed=1):
        t = torch.full((37,), 1.0).pin_memory()
        block = t.data_ptr()
        dst = torch.zeros(37, device="cuda")
        torch.cuda._sleep(int(50e6 * 1.98))  # 50 ms at the virtual clock rate
        dst.copy_(t, non_blocking=True)
        del t
        other = torch.empty(37, pin_memory=True)  # kept: a freed one would be reused first
        assert other.data_ptr() != block
        torch.cuda.synchronize()
        assert torch.empty(37, pin_memory=True).data_ptr() == block


# --- CUDA generators -------------------------------------------------------------------------

def _draws(seed, policy):
    with so.virtual_device(policy=policy, seed=seed):
        g = torch.Generator(device="cuda").manual_seed(5)
        a = torch.rand(6, device="cuda", generator=g)
        x = torch.empty(6, device="cuda").normal_(generator=g)
        torch.cuda.manual_seed(11)
        b = torch.randn(6, device="cuda")
        return a.tolist(), x.tolist(), b.tolist()


def test_random_values_do_not_depend_on_the_schedule():
    assert _draws(0, "eager") == _draws(3, "random") == _draws(1, "lazy")


def test_generators_respect_their_seed(lazy):
    g = torch.Generator(device="cuda")
    assert g.device == torch.device("cuda", 0) and isinstance(g, torch.Generator)
    g.manual_seed(1234)
    first = torch.rand(16, device="cuda", generator=g)
    g.manual_seed(1234)
    assert torch.equal(first, torch.rand(16, device="cuda", generator=g))
    g.manual_seed(4321)
    assert not torch.equal(first, torch.rand(16, device="cuda", generator=g))
    torch.cuda.manual_seed(99)
    a = torch.randn(16, device="cuda")
    torch.manual_seed(99)  # seeds the CUDA generators too, as torch does
    assert torch.equal(a, torch.randn(16, device="cuda"))
    assert torch.cuda.initial_seed() == 99


def test_multinomial_and_uniform_with_generator(lazy):
    probs = torch.tensor([0.0, 0.5, 0.0, 0.5], device="cuda")
    g = torch.Generator(device="cuda").manual_seed(7)
    first = torch.multinomial(probs, 8, replacement=True, generator=g)
    u = torch.empty(4, device="cuda").uniform_(generator=g)
    g.manual_seed(7)
    assert torch.equal(first, torch.multinomial(probs, 8, replacement=True, generator=g))
    assert torch.equal(u, torch.empty(4, device="cuda").uniform_(generator=g))
    assert set(first.tolist()) <= {1, 3}
    with pytest.raises(RuntimeError, match="Expected a 'cuda' device type for generator"):
        torch.multinomial(probs, 2, generator=torch.Generator())


def test_rng_state_roundtrip(lazy):
    state = torch.cuda.get_rng_state()
    assert state.dtype == torch.uint8 and state.device.type == "cpu"
    first = torch.rand(8, device="cuda")
    torch.cuda.set_rng_state(state)
    assert torch.equal(first, torch.rand(8, device="cuda"))
    assert len(torch.cuda.default_generators) == 1


# --- protocol attributes, the generic device API --------------------------------------------

def test_stream_and_event_handles(lazy):
    a, b = torch.cuda.Stream(), torch.cuda.Stream(priority=-1)
    assert isinstance(a.cuda_stream, int) and a.cuda_stream != b.cuda_stream
    assert a.__cuda_stream__() == (0, a.cuda_stream)
    assert torch.cuda.Stream.priority_range() == (0, -1) and b.priority == -1
    ev = torch.cuda.Event()
    assert ev.cuda_event == 0  # created at the first record, as on CUDA
    ev.record()
    assert isinstance(ev.cuda_event, int) and ev.cuda_event != 0
    with pytest.raises(NotModelledError, match="interprocess"):
        torch.cuda.Event(interprocess=True)
    with pytest.raises(NotModelledError, match="ipc_handle"):
        ev.ipc_handle()
    with pytest.raises(NotModelledError, match="ExternalStream"):
        torch.cuda.ExternalStream(a.cuda_stream)


def test_torch_event_and_stream_are_cuda(lazy):
    side = torch.cuda.Stream()
    ev = torch.Event(device="cuda")
    assert ev.device.type == "cuda" and isinstance(ev, torch.Event)
    assert torch.Event().device.type == "cuda"  # the current accelerator
    with torch.cuda.stream(side):
        torch.cuda._sleep(SLEEP)
        x = torch.full((16,), 3.0, device="cuda")
    ev.record(side)
    ev.wait(torch.cuda.current_stream())
    assert x.sum().item() == 48.0
    assert not lazy.races
    s = torch.Stream("cuda")
    assert s.device.type == "cuda" and isinstance(s, torch.Stream)
    with s:
        assert torch.cuda.current_stream() == s
    assert torch.Stream("cpu").device.type == "cpu"


def test_torch_event_orders_like_a_cuda_event():
    # The broken twin: no wait on the event -> a race report, not a silent CPU event.
    with pytest.raises(so.StreamRaceError):
        with so.virtual_device(policy="lazy"):
            side = torch.cuda.Stream()
            ev = torch.Event()
            with torch.cuda.stream(side):
                x = torch.full((16,), 3.0, device="cuda")
            ev.record(side)
            x.sum().item()


def test_accelerator(lazy):
    assert torch.accelerator.is_available()
    assert torch.accelerator.current_accelerator().type == "cuda"
    assert torch.accelerator.device_count() == 1 and torch.accelerator.current_device_index() == 0
    side = torch.cuda.Stream()
    torch.accelerator.set_stream(side)
    assert torch.cuda.current_stream() == side == torch.accelerator.current_stream()
    torch.accelerator.set_stream(torch.cuda.default_stream())
    torch.cuda._sleep(SLEEP)
    torch.accelerator.synchronize()
    assert torch.cuda.current_stream().query()
    with torch.accelerator.device_index(0):
        pass
    assert torch.get_device_module("cuda") is torch.cuda


# --- types, nvtx, debug mode -----------------------------------------------------------------

def test_legacy_typed_constructors(lazy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = torch.cuda.FloatTensor(4).fill_(1.5)
        n = torch.cuda.LongTensor([1, 2, 3])
        h = torch.cuda.HalfTensor(torch.Size([2, 2]))
    assert (f.dtype, n.dtype, h.dtype, h.shape) == (torch.float32, torch.int64, torch.float16, (2, 2))
    assert f.is_cuda and f.sum().item() == 6.0 and n.sum().item() == 6
    assert isinstance(f, torch.cuda.FloatTensor) and not isinstance(n, torch.cuda.FloatTensor)
    assert not isinstance(torch.ones(2), torch.cuda.FloatTensor)
    with pytest.raises(NotModelledError, match="torch.cuda.FloatTensor"):
        torch.cuda.FloatTensor("x")


def test_device_is_a_type_and_a_context(lazy):
    original = torch.cuda.device.__mro__[1]
    ctx = torch.cuda.device(0)
    assert isinstance(ctx, torch.cuda.device) and isinstance(ctx, original)
    with ctx:
        assert torch.cuda.current_device() == 0
    x = torch.ones(2, device="cuda")
    with torch.cuda.device_of(x), torch.cuda.device_of(torch.ones(1)):
        pass
    with pytest.raises(ValueError, match="one GPU"):
        torch.cuda.device(1)


def test_nvtx_is_harmless(lazy):
    assert torch.cuda.nvtx.range_push("outer") == 0
    with torch.cuda.nvtx.range("inner"):
        x = torch.ones(8, device="cuda") * 2
    torch.cuda.nvtx.mark("done")
    assert torch.cuda.nvtx.range_pop() == 0
    assert x.sum().item() == 16.0


def test_sync_debug_mode(lazy):
    torch.cuda.set_sync_debug_mode("default")
    torch.cuda.set_sync_debug_mode(0)
    assert torch.cuda.get_sync_debug_mode() == 0
    with pytest.raises(NotModelledError, match="set_sync_debug_mode"):
        torch.cuda.set_sync_debug_mode("warn")


# --- storages, torch.save / torch.load, DataLoader, autocast --------------------------------

def test_storage_of_a_device_tensor(lazy):
    x = torch.arange(4.0, device="cuda")
    s = x.untyped_storage()
    assert (s.device.type, s.nbytes(), s.size(), s.element_size()) == ("cuda", 16, 16, 1)
    assert s.data_ptr() == x.data_ptr()
    assert torch.frombuffer(bytearray(bytes(s.cpu())), dtype=torch.float32).tolist() == [0, 1, 2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        typed = x.storage()
    assert (typed.size(), typed.element_size(), typed.tolist()) == (4, 4, [0.0, 1.0, 2.0, 3.0])
    with pytest.raises(NotModelledError, match="UntypedStorage.resize_"):
        s.resize_(0)


def test_torch_save_and_load_cuda_tensors(lazy):
    buffer = io.BytesIO()
    torch.save({"dev": torch.arange(5, device="cuda"), "host": torch.ones(2)}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)
    assert loaded["dev"].device.type == "cuda" and loaded["dev"].tolist() == [0, 1, 2, 3, 4]
    assert loaded["host"].device.type == "cpu"
    buffer.seek(0)
    assert torch.load(buffer, map_location="cpu")["dev"].device.type == "cpu"
    host_file = io.BytesIO()
    torch.save(torch.ones(3), host_file)
    host_file.seek(0)
    assert torch.load(host_file, map_location="cuda").device.type == "cuda"


def test_saved_cuda_tensor_is_a_cuda_checkpoint_outside():
    buffer = io.BytesIO()
    with so.virtual_device():
        torch.save(torch.arange(3, device="cuda"), buffer)
    buffer.seek(0)
    assert torch.load(buffer, map_location="cpu").tolist() == [0, 1, 2]
    buffer.seek(0)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(buffer)  # a CPU build cannot restore a "cuda:0" location, as with any GPU file


def test_dataloader_pin_memory(lazy):
    loader = DataLoader(TensorDataset(torch.arange(16.0).view(8, 2)), batch_size=4, pin_memory=True)
    total = torch.zeros((), device="cuda")
    for (batch,) in loader:
        assert batch.is_pinned()
        total += batch.to("cuda", non_blocking=True).sum()
    assert total.item() == 120.0


def test_autocast_cuda_runs_in_lower_precision(lazy):
    a = torch.randn(8, 8, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = a @ a
    assert out.dtype == torch.float16
    assert torch.allclose(out.float(), a @ a, rtol=1e-2, atol=1e-1)


# --- the net: every torch.cuda callable works or is refused by name ---------------------------

# Arguments for the modelled callables that need some; everything else is called bare.
ARGS = {
    "manual_seed": (1,), "manual_seed_all": (1,), "set_sync_debug_mode": (0,),
    "set_rng_state": (lambda: torch.cuda.get_rng_state(),),
    "set_rng_state_all": (lambda: torch.cuda.get_rng_state_all(),),
    "StreamContext": (lambda: torch.cuda.Stream(),), "stream": (None,),
    "set_stream": (lambda: torch.cuda.default_stream(),), "set_device": (0,),
    "_sleep": (1,), "device": (0,), "device_of": (lambda: torch.ones(1),),
    "graph": (lambda: torch.cuda.CUDAGraph(),),  # constructed, not entered
}


def _public_callables():
    for name in sorted(dir(torch.cuda)):
        value = getattr(torch.cuda, name)
        module = getattr(value, "__module__", None) or ""
        if name.startswith("_") or not callable(value) or isinstance(value, type(torch)):
            continue
        if isinstance(value, type) and issubclass(value, BaseException):
            continue
        if module.startswith(("torch.cuda", "pytest_streamorder")):
            yield name, value


def test_every_torch_cuda_callable_works_or_is_refused_by_name(lazy):
    outcomes = {}
    for name, value in _public_callables():
        args = [a() if callable(a) else a for a in ARGS.get(name, ())]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value(*args)
            outcomes[name] = "works"
        except NotModelledError as exc:
            assert name in str(exc), (name, str(exc))
            outcomes[name] = "refused"
        except Exception as exc:  # a raw error: the net has a hole
            outcomes[name] = f"{type(exc).__name__}: {exc}"
    raw = {n: o for n, o in outcomes.items() if o not in ("works", "refused")}
    assert not raw
    for name in ("memory_allocated", "manual_seed", "FloatTensor", "device", "Stream", "Event",
                 "synchronize", "empty_cache", "get_rng_state", "CUDAGraph", "graph",
                 "graph_pool_handle", "is_current_stream_capturing"):
        assert outcomes[name] == "works", name
    for name in ("make_graphed_callables", "memory_snapshot", "cudart", "list_gpu_processes", "FloatStorage"):
        assert outcomes[name] == "refused", name
    assert len(outcomes) > 100


def test_every_referenced_c_entry_point_exists_and_unmodelled_ones_refuse(lazy):
    names = cuda_net.referenced_c_entry_points()
    assert "_cuda_memoryStats" in names and len(names) > 50
    for name in names:
        assert hasattr(torch._C, name), name
    with pytest.raises(NotModelledError, match="torch._C._cuda_memorySnapshot"):
        torch._C._cuda_memorySnapshot(None)
    assert torch._C._cuda_getDeviceCount() == 1


def test_refused_types_keep_isinstance(lazy):
    assert not isinstance(torch.ones(1), torch.cuda.CUDAGraph)
    assert isinstance(torch.cuda.Stream(), torch.cuda.Stream)


def test_everything_is_restored_after_the_device():
    originals = (torch.Event, torch.Stream, torch.Generator, torch.save, torch.load,
                 torch.cuda.memory_allocated, torch.cuda.memory.is_initialized,
                 torch.cuda.device, torch.cuda.FloatTensor, torch.cuda.nvtx._nvtx)
    had = {n: hasattr(torch._C, n) for n in cuda_net.referenced_c_entry_points()}
    with so.virtual_device():
        assert torch.Event is not originals[0]
    assert (torch.Event, torch.Stream, torch.Generator, torch.save, torch.load,
            torch.cuda.memory_allocated, torch.cuda.memory.is_initialized,
            torch.cuda.device, torch.cuda.FloatTensor, torch.cuda.nvtx._nvtx) == originals
    assert {n: hasattr(torch._C, n) for n in had} == had
    assert torch.Event().device.type == "cpu"
