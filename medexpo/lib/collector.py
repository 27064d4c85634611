"""Python's cyclic garbage collector, tuned for bulk work.

A bulk pass (ingest, classification) keeps a batch of thousands of small containers alive at a
time and makes almost no reference cycles: objects are freed by reference counting the moment
their batch is done. With the default threshold (a young collection every 700 net allocations)
the collector walks those live batches again and again and frees nothing: on 200,000 banners it
took 7-11 µs of CPU a banner, 9-16 % of the ingest's run time (docs/BENCHMARKS.md). Rarer
collections keep the memory bound that the collector exists for: cyclic garbage is still
collected, after 50,000 allocations instead of 700.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

BULK_THRESHOLD = (50_000, 20, 1_000)


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect less often inside the block, never more often than before; the thresholds that
    were set are restored after it, however it ends (a qcluster worker runs other tasks next)."""
    before = gc.get_threshold()
    gc.set_threshold(*(max(now, bulk) if now else 0 for now, bulk in zip(before, BULK_THRESHOLD, strict=False)))
    try:
        yield
    finally:
        gc.set_threshold(*before)
