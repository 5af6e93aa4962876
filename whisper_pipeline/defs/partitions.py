"""The one partitioning scheme: a daily partition per landing date (``raw/YYYY-MM-DD/``)."""

import dagster as dg

daily_partitions = dg.DailyPartitionsDefinition(start_date="2024-01-01")
"""Daily partitions keyed ``YYYY-MM-DD``; the key is the landing folder's name."""
