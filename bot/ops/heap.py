"""The collector's settings for a long-running bot process. A poll tick makes and drops tens of thousands of small
objects (rows, task records); with Python's default thresholds the collector runs about a hundred times a tick and
now and then walks every object start-up made (discord.py's, pydantic's): about a third of a 10,000-job tick's main
thread on the machine of docs/benchmarks.md (`python -m bench.tick`)."""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000  # allocations before the youngest generation is collected (Python's default: 700)


def tune_collector() -> None:
    """Once, after start-up: what start-up made is never walked again (`gc.freeze`), and the youngest generation
    is collected after 50,000 allocations, not 700 (a tick's short-lived rows mostly die before)."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
