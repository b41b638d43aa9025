"""Expected outcome of each SGLang/vLLM-style test under `pytest --streamorder`, once issues
12 and 13 are done. Read by scripts/downstream_report.py.

"pass": correct code (or a guard); it must stay silent on every schedule.
"race": a broken twin; it must fail with a StreamRaceError report (a stale value alone, or
any other error, does not count).
TWINS maps each broken twin to the correct test it differs from by one missing edge.
"""

EXPECTED = {
    # guards: the CUDA path was taken (a silent .cpu() fallback fails them)
    "test_platform_path.py::test_helper_took_cuda_path": "pass",
    "test_platform_path.py::TestRelayPath::test_relay_uses_private_d2h_stream": "pass",
    # FutureMap-like publish / resolve (unittest, setUpClass)
    "test_seq_len_relay.py::TestSeqLenRelay::test_resolve_sees_published_lengths": "pass",
    "test_seq_len_relay.py::TestSeqLenRelay::test_resolve_ungated_d2h": "race",
    "test_seq_len_relay.py::TestSeqLenRelay::test_resolve_host_reads_before_sync": "race",
    "test_seq_len_relay.py::TestSeqLenRelay::test_idle_step_keeps_last_publish": "pass",
    "test_seq_len_relay.py::TestSeqLenRelay::test_event_recorded_before_write": "race",
    # exact element sets (issue 13)
    "test_seq_len_relay.py::TestTwoStreamPublish::test_disjoint_slots_two_streams": "pass",
    "test_seq_len_relay.py::TestTwoStreamPublish::test_overlapping_slot_two_streams": "race",
    "test_seq_len_relay.py::TestTwoStreamPublish::test_column_halves_two_streams": "pass",
    "test_seq_len_relay.py::TestTwoStreamPublish::test_column_halves_overlap_one_column": "race",
    # vLLM-style staging through NumPy views (function tests, module-scoped fixture)
    "test_staging_buffer.py::test_refill_waits_for_copy": "pass",
    "test_staging_buffer.py::test_refill_before_copy_ran": "race",
    "test_staging_buffer.py::test_dummy_step_records_event": "pass",
    "test_staging_buffer.py::test_dummy_step_skips_event": "race",
    "test_staging_buffer.py::test_copy_to_gpu_returns_device_rows": "pass",
    "test_staging_buffer.py::test_d2h_numpy_view_read_after_sync": "pass",
    "test_staging_buffer.py::test_d2h_numpy_view_read_before_sync": "race",
    # fixtures of session and module scope
    "test_fixture_buffers.py::test_pool_read_after_fixture_sync": "pass",
    "test_fixture_buffers.py::test_pool_read_unsynced_fixture": "race",
    "test_fixture_buffers.py::test_schedule_stream_waits_for_init": "pass",
    "test_fixture_buffers.py::test_schedule_stream_races_init": "race",
    "test_fixture_buffers.py::test_forward_stream_reads_pool": "pass",
    # a forward pass in a worker thread with its own stream
    "test_worker_forward.py::TestWorkerForward::test_forward_in_worker_thread": "pass",
    "test_worker_forward.py::TestWorkerForward::test_forward_in_worker_thread_no_wait": "race",
}

TWINS = {
    "test_seq_len_relay.py::TestSeqLenRelay::test_resolve_ungated_d2h":
        "test_seq_len_relay.py::TestSeqLenRelay::test_resolve_sees_published_lengths",
    "test_seq_len_relay.py::TestSeqLenRelay::test_resolve_host_reads_before_sync":
        "test_seq_len_relay.py::TestSeqLenRelay::test_resolve_sees_published_lengths",
    "test_seq_len_relay.py::TestSeqLenRelay::test_event_recorded_before_write":
        "test_seq_len_relay.py::TestSeqLenRelay::test_idle_step_keeps_last_publish",
    "test_seq_len_relay.py::TestTwoStreamPublish::test_overlapping_slot_two_streams":
        "test_seq_len_relay.py::TestTwoStreamPublish::test_disjoint_slots_two_streams",
    "test_seq_len_relay.py::TestTwoStreamPublish::test_column_halves_overlap_one_column":
        "test_seq_len_relay.py::TestTwoStreamPublish::test_column_halves_two_streams",
    "test_staging_buffer.py::test_refill_before_copy_ran":
        "test_staging_buffer.py::test_refill_waits_for_copy",
    "test_staging_buffer.py::test_dummy_step_skips_event":
        "test_staging_buffer.py::test_dummy_step_records_event",
    "test_staging_buffer.py::test_d2h_numpy_view_read_before_sync":
        "test_staging_buffer.py::test_d2h_numpy_view_read_after_sync",
    "test_fixture_buffers.py::test_pool_read_unsynced_fixture":
        "test_fixture_buffers.py::test_pool_read_after_fixture_sync",
    "test_fixture_buffers.py::test_schedule_stream_races_init":
        "test_fixture_buffers.py::test_schedule_stream_waits_for_init",
    "test_worker_forward.py::TestWorkerForward::test_forward_in_worker_thread_no_wait":
        "test_worker_forward.py::TestWorkerForward::test_forward_in_worker_thread",
}
