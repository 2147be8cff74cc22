"""The wall-clock seconds of each stage of a job, as the `time/<stage>_s` metrics.

clock = Stopwatch()
with clock("importance"):
    ...
clock.times      # {"time/importance_s": 12.3}
"""

from __future__ import annotations

import contextlib
import time

from regionbench.common import names


class Stopwatch:
    """Collects `time/<stage>_s`: the wall-clock seconds of each stage of a job."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[names.time(stage)] = time.perf_counter() - start
