import subprocess
import sys

import pytest

SCRIPT = """
import sys
import numpy as np
from whisper_pipeline.core.memory import release_free_memory

kept, live = [], []
for step in range(400):
    live.append(np.ones((((step * 5) % 11) + 1) * 262144, np.float32))  # 1 to 11 MiB
    kept.append(np.ones(16384, np.uint8))
    if len(live) > 3:
        live.pop(0)
live.clear()
if sys.argv[1] == "trim":
    assert release_free_memory()
rss = open("/proc/self/status").read().split("VmRSS:")[1].split()[0]
print(int(rss) // 1024)
"""


def rss_after_churn(mode: str) -> int:
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(completed.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_release_free_memory_returns_the_freed_heap_to_the_system():
    # Blocks of 1 to 11 MiB (three alive at a time) freed between small blocks that stay, as a
    # model's batch buffers are: glibc keeps them in its heap arenas, resident, until trimmed.
    assert rss_after_churn("trim") + 20 < rss_after_churn("keep")
