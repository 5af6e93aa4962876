"""A Whisper stand-in that costs nothing but runs every line of this project's code.

``benchmarks.standin.model.ReplayWhisper`` replaces CTranslate2's ``ctranslate2.models.Whisper``:
it answers ``encode`` with zeros and ``generate``/``align`` with outputs recorded from the real
model on the corpus (``benchmarks.standin.record``), so a run measures the pipeline's cost
outside the model, as on an infinitely fast accelerator. ``sitecustomize.py`` in this folder
installs it in every Python process of a Dagster CLI run (see its docstring).
"""
