"""Who the virtual GPU says it is: the constants every read-out of its identity and size
uses (device properties, mem_get_info, memory statistics), kept in one place."""

NAME = "Virtual CUDA device (pytest-streamorder)"
TOTAL_MEMORY = 80 * 2**30  # bytes, as an 80 GB A100/H100
MULTI_PROCESSOR_COUNT = 132
DEVICE_COUNT = 1
