from __future__ import annotations

import gc
import weakref

from twisted.internet.task import Clock

from txairflowrpc.service.collector import (
    FULL_EVERY_SECONDS,
    YOUNG_EVERY_SECONDS,
    YOUNG_THRESHOLD,
    CollectorTuning,
)


class Node:
    other: "Node"


def _cycle() -> "weakref.ref[Node]":
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_running_it_freezes_the_start_up_heap_and_spaces_young_collections() -> None:
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    tuning = CollectorTuning(Clock())
    tuning.startService()
    try:
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > frozen_before
        assert gc.isenabled()  # cycles are still collected
    finally:
        tuning.stopService()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_cycle_left_behind_is_collected_at_the_next_full_collection() -> None:
    clock = Clock()
    # Young collections so rare that only the periodic one can find it.
    trims: list[int] = []
    tuning = CollectorTuning(clock, young=10**9, trim=lambda pad: trims.append(pad) or 1)
    tuning.startService()
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a
        left = weakref.ref(a)
        gc.collect(1)  # it lived long enough to reach the oldest generation
        del a, b  # and then became garbage: the per-second collections do not look there
        clock.advance(FULL_EVERY_SECONDS - 0.1)
        assert left() is not None and trims == []
        clock.advance(0.1)
        assert left() is None
        assert trims == [0]  # then the freed heap is handed back
    finally:
        tuning.stopService()
    assert not clock.getDelayedCalls()  # stopped with the service


def test_young_collections_still_run_at_their_threshold() -> None:
    tuning = CollectorTuning(Clock(), young=50)
    tuning.startService()
    try:
        collected: list[int] = []

        def note(phase: str, info: dict[str, int]) -> None:
            if phase == "stop":
                collected.append(info["collected"])

        gc.callbacks.append(note)
        try:
            for _ in range(200):
                _cycle()
        finally:
            gc.callbacks.remove(note)
        assert sum(collected) > 0
    finally:
        tuning.stopService()


def test_recent_garbage_waits_at_most_a_second_whatever_the_threshold() -> None:
    """
    A flood of connections that open and close makes garbage faster than
    the calls' allocations reach the young threshold: the young and middle
    generations are collected every `YOUNG_EVERY_SECONDS` all the same.
    """
    clock = Clock()
    tuning = CollectorTuning(clock, young=10**9, trim=None)
    tuning.startService()
    try:
        left = _cycle()
        clock.advance(YOUNG_EVERY_SECONDS - 0.1)
        assert left() is not None
        clock.advance(0.1)
        assert left() is None
        assert YOUNG_EVERY_SECONDS < FULL_EVERY_SECONDS
    finally:
        tuning.stopService()
    assert not clock.getDelayedCalls()
