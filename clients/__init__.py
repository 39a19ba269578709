"""Python client library and the batch-conversion CLI (torch-free)."""
