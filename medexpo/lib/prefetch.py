"""Run a producer (file reading and parsing, or API paging) in a thread ahead of its consumer.

The ingest consumer spends much of its time waiting for the database; parsing the next batch
meanwhile roughly overlaps the two. Items arrive in order, in chunks, through a bounded queue
(so memory stays bounded), and an exception in the producer is raised in the consumer at the
point where it happened.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(iterable: Iterable[T], *, chunk: int = 256, depth: int = 8) -> Iterator[T]:
    channel: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                channel.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(iterable)
        buffer: list = []
        try:
            for item in iterator:
                buffer.append(item)
                if len(buffer) >= chunk:
                    if not put(buffer):
                        return
                    buffer = []
            if put(buffer):
                put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            if put(buffer):
                put(_Failure(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="medexpo-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = channel.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield from item
    finally:
        stop.set()
        thread.join(timeout=10)
