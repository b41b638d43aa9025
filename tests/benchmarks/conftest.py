# The stream_benchmark fixture, for these benchmarks. (The plugin registers it too once it
# re-exports pytest_streamorder.benchmarking; this import then is the same function.)
from pytest_streamorder.benchmarking import stream_benchmark  # noqa: F401
