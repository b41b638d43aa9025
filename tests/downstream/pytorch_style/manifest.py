"""Expected outcome of each PyTorch-style test under `pytest --streamorder`, once issues 12
(a virtual CUDA runtime for the whole session) and 13 (exact memory, plausible time) are
done. Read by scripts/downstream_report.py.

"pass": the API has a meaning for ordering or memory and is modelled (or has no meaning for
either and is harmless), so correct code passes on every schedule.
"refused: NAME": the API is outside the model; the test must fail with the plugin's own
"... is not modelled" error naming it (NAME is matched as a substring; "a|b" allows either).
Every body is correct CUDA code, so neither a race nor a raw error is ever expected here.
"""

EXPECTED = {
    # --- streams (issue 12 items 1, 3, 5; issue 13's plausible time for query) ---
    "test_streams_events.py::TestStreams::test_cuda_visible_at_import": "pass",
    "test_streams_events.py::TestStreams::test_default_stream_is_current": "pass",
    "test_streams_events.py::TestStreams::test_stream_context_restores_current": "pass",
    "test_streams_events.py::TestStreams::test_wait_stream_orders_side_after_current": "pass",
    "test_streams_events.py::TestStreams::test_three_stream_wait_chain": "pass",
    # a 50 ms sleep cannot be over before the host's next line (issue 13)
    "test_streams_events.py::TestStreams::test_stream_query_false_while_busy": "pass",
    # priorities change scheduling, not ordering: harmless, accepted with the range queried
    "test_streams_events.py::TestStreams::test_stream_priority": "pass",
    "test_streams_events.py::TestStreams::test_streams_hashable_with_repr": "pass",
    # protocol attributes are opaque handles (issue 12 item 5)
    "test_streams_events.py::TestStreams::test_cuda_stream_handles": "pass",
    "test_streams_events.py::TestStreams::test_synchronize_device_orders_host": "pass",
    # --- events ---
    "test_streams_events.py::TestEvents::test_event_synchronize_then_query": "pass",
    "test_streams_events.py::TestEvents::test_event_query_false_while_busy": "pass",
    # elapsed_time follows the virtual clock; _sleep runs at the device clock (issue 13)
    "test_streams_events.py::TestEvents::test_event_elapsed_time": "pass",
    "test_streams_events.py::TestEvents::test_wait_event_orders_reader": "pass",
    "test_streams_events.py::TestEvents::test_event_wait_method": "pass",
    "test_streams_events.py::TestEvents::test_wait_on_unrecorded_event_is_noop": "pass",
    "test_streams_events.py::TestEvents::test_event_rerecord_moves_fence": "pass",
    "test_streams_events.py::TestEvents::test_cuda_event_handle": "pass",
    # another process waiting on our event is outside a one-process model
    "test_streams_events.py::TestEvents::test_interprocess_event_handle":
        "refused: interprocess",
    # --- the generic device API (issue 12 lists each as a raw error or a silent CPU path) ---
    "test_streams_events.py::TestGenericDeviceAPI::test_torch_event_is_a_cuda_event": "pass",
    "test_streams_events.py::TestGenericDeviceAPI::test_torch_stream_cuda": "pass",
    "test_streams_events.py::TestGenericDeviceAPI::test_accelerator_queries": "pass",
    "test_streams_events.py::TestGenericDeviceAPI::test_accelerator_set_stream_is_cuda_current":
        "pass",
    "test_streams_events.py::TestGenericDeviceAPI::test_get_device_module": "pass",
    # --- record_stream and the device caching allocator (issue 13's list) ---
    "test_memory.py::TestRecordStream::test_record_stream_delays_reuse": "pass",
    "test_memory.py::TestRecordStream::test_record_stream_on_shifted_view": "pass",
    "test_memory.py::TestRecordStream::test_same_stream_reuse_is_immediate": "pass",
    # memory stats come from the allocator model (issue 12 item 5)
    "test_memory.py::TestCachingAllocatorStats::test_memory_allocated_tracks_tensors": "pass",
    "test_memory.py::TestCachingAllocatorStats::test_max_memory_allocated_after_reset": "pass",
    "test_memory.py::TestCachingAllocatorStats::test_memory_stats_agree": "pass",
    "test_memory.py::TestCachingAllocatorStats::test_mem_get_info": "pass",
    "test_memory.py::TestCachingAllocatorStats::test_empty_cache_keeps_live_tensors": "pass",
    # --- pinned memory: the pinned host caching allocator is issue 12's; its clock issue 13's ---
    "test_memory.py::TestPinnedMemory::test_pin_memory_is_pinned": "pass",
    "test_memory.py::TestPinnedMemory::test_caching_pinned_memory_reuse": "pass",
    "test_memory.py::TestPinnedMemory::test_to_cuda_non_blocking_from_pinned": "pass",
    "test_memory.py::TestPinnedMemory::test_to_cpu_non_blocking_gives_pinned": "pass",
    "test_memory.py::TestPinnedMemory::test_to_cpu_blocking_by_default": "pass",
    # basic indexing of a pinned buffer is a view, not a host read (issue 13)
    "test_memory.py::TestPinnedMemory::test_pinned_rows_copied_in_flight": "pass",
    # copy_ returns the destination itself (issue 13)
    "test_memory.py::TestPinnedMemory::test_copy_returns_destination": "pass",
    "test_memory.py::TestPinnedMemory::test_dataloader_pin_memory": "pass",
    "test_memory.py::TestPinnedMemory::test_untyped_storage_of_device_tensor": "pass",
    "test_memory.py::TestPinnedMemory::test_torch_load_cuda_tensor": "pass",
    # --- threads: the current stream is per thread; ops from any thread are seen (item 4) ---
    "test_misc.py::TestThreads::test_set_stream_in_worker_is_thread_local": "pass",
    "test_misc.py::TestThreads::test_new_thread_starts_on_default_stream": "pass",
    "test_misc.py::TestThreads::test_worker_stream_work_visible_after_join": "pass",
    "test_misc.py::TestThreads::test_threads_matmul_on_own_streams": "pass",
    # --- CUDA generators with their own state (item 5) ---
    "test_misc.py::TestGenerators::test_cuda_generator_reproducible": "pass",
    "test_misc.py::TestGenerators::test_cuda_manual_seed_reproducible": "pass",
    "test_misc.py::TestGenerators::test_multinomial_with_cuda_generator": "pass",
    "test_misc.py::TestGenerators::test_cuda_rng_state_roundtrip": "pass",
    # --- device queries, legacy constructors, modules ---
    "test_misc.py::TestDeviceAndModules::test_legacy_typed_constructors": "pass",
    "test_misc.py::TestDeviceAndModules::test_device_properties": "pass",
    "test_misc.py::TestDeviceAndModules::test_device_context_manager": "pass",
    # nvtx has no meaning for ordering or memory: harmless
    "test_misc.py::TestDeviceAndModules::test_nvtx_ranges": "pass",
    "test_misc.py::TestDeviceAndModules::test_autocast_cuda": "pass",
    # issue 12 item 6: a forward pass with grad-requiring parameters must work, never abort
    "test_misc.py::TestDeviceAndModules::test_module_forward_with_grad_params": "pass",
    # issue 12 saw backward stop at the accelerator check: a named refusal is the floor
    # (if backward becomes modelled, this entry becomes "pass")
    "test_misc.py::TestDeviceAndModules::test_module_backward": "refused: backward|autograd",
    # --- out of the model: refused by name ---
    # issue 14: CUDA graphs are modelled (sim/graphs.py)
    "test_misc.py::TestUnmodelledAPIs::test_cuda_graph_capture_replay": "pass",
    "test_misc.py::TestUnmodelledAPIs::test_external_stream": "refused: ExternalStream",
    "test_misc.py::TestUnmodelledAPIs::test_sync_debug_mode_warns":
        "refused: set_sync_debug_mode",
}
