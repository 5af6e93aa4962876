"""Benchmarks of the transcription pipeline against plain faster-whisper (see ``run.py``)."""
