"""Put ``ReplayWhisper`` in place of CTranslate2's ``Whisper`` in every process of a run.

Python imports ``sitecustomize`` at start-up from the first ``sys.path`` entry that has one, so
with this folder on ``PYTHONPATH`` every interpreter a ``dagster asset materialize`` starts (the
CLI, the multiprocess executor's forkserver and the step processes it forks) runs this. When
``$WHISPER_PIPELINE_STANDIN`` names a recording (``benchmarks.standin.record``), it waits for
``ctranslate2`` to be imported and then sets ``ctranslate2.models.Whisper`` to
``benchmarks.standin.model.ReplayWhisper``; otherwise it does nothing. Nothing is imported
before ``ctranslate2`` is, so start-up and import order stay as they are. The repository root
must be on ``PYTHONPATH`` too (for ``benchmarks``); the product code is not touched.

    export WHISPER_PIPELINE_STANDIN=benchmarks/out/standin/recording.json
    PYTHONPATH=benchmarks/standin:. python -m dagster asset materialize \\
        -m whisper_pipeline.definitions --select '*' --partition 2026-11-20
"""

import importlib.abc
import importlib.util
import os
import sys


class _ReplaceAfterImport(importlib.abc.MetaPathFinder):
    """Finds ``ctranslate2`` as the other finders do, and installs the stand-in once it ran."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "ctranslate2":
            return None
        sys.meta_path.remove(self)  # once, and so that find_spec below skips this finder
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_replace(module):
            exec_module(module)
            from benchmarks.standin.model import install

            install(module)

        spec.loader.exec_module = exec_and_replace
        return spec


if os.environ.get("WHISPER_PIPELINE_STANDIN"):
    if "ctranslate2" in sys.modules:  # imported before site ran (not expected)
        from benchmarks.standin.model import install

        install(sys.modules["ctranslate2"])
    else:
        sys.meta_path.insert(0, _ReplaceAfterImport())
