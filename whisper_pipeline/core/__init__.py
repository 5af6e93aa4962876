"""Dagster-free core: audio decoding, chunking, batched decoding, table schemas, storage."""
