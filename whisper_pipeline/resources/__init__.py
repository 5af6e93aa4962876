"""Dagster resources: storage root and the Whisper model."""

from whisper_pipeline.resources.storage import StorageResource
from whisper_pipeline.resources.transcriber import TranscriberResource
from whisper_pipeline.resources.whisper import WhisperModelResource

__all__ = ["StorageResource", "TranscriberResource", "WhisperModelResource"]
