import threading

import pytest

from medexpo.lib.prefetch import prefetch


def test_it_yields_everything_in_order() -> None:
    assert list(prefetch(range(10_000), chunk=7, depth=2)) == list(range(10_000))


def test_a_producer_error_is_raised_after_the_items_before_it() -> None:
    def source():
        yield from range(5)
        raise LookupError("boom")

    seen = []
    with pytest.raises(LookupError, match="boom"):
        for item in prefetch(source(), chunk=2):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_stopping_early_ends_the_producer_and_closes_the_source() -> None:
    closed = threading.Event()

    def source():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    for item in prefetch(source(), chunk=4, depth=1):
        if item == 10:
            break
    assert closed.wait(5)
