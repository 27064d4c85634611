import gc

import pytest

from medexpo.lib.collector import BULK_THRESHOLD, fewer_collections


@pytest.fixture
def threshold():
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_inside_the_block_young_collections_are_rarer_and_the_thresholds_come_back(threshold) -> None:
    gc.set_threshold(700, 10, 10)
    with fewer_collections():
        assert gc.get_threshold() == BULK_THRESHOLD
    assert gc.get_threshold() == (700, 10, 10)


def test_it_never_collects_more_often_than_before(threshold) -> None:
    gc.set_threshold(100_000, 50, 2_000)
    with fewer_collections():
        assert gc.get_threshold() == (100_000, 50, 2_000)


def test_a_collector_switched_off_by_threshold_stays_off(threshold) -> None:
    gc.set_threshold(0)
    with fewer_collections():
        assert gc.get_threshold()[0] == 0


def test_the_thresholds_come_back_when_the_block_fails(threshold) -> None:
    gc.set_threshold(700, 10, 10)
    with pytest.raises(LookupError), fewer_collections():
        raise LookupError
    assert gc.get_threshold() == (700, 10, 10)


def test_cyclic_garbage_is_still_collected_inside_the_block(threshold) -> None:
    class Node:
        pass

    collected = []
    gc.callbacks.append(lambda phase, info: collected.append(info) if phase == "stop" else None)
    try:
        with fewer_collections():
            for _ in range(BULK_THRESHOLD[0] * 2):
                a, b = Node(), Node()
                a.other, b.other = b, a  # a cycle: reference counting alone never frees it
    finally:
        gc.callbacks.pop()
    assert sum(info["collected"] for info in collected) > 0
