"""whisper_pipeline: daily-partitioned Dagster assets from raw audio to Parquet transcripts."""
