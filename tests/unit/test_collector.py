from __future__ import annotations

import gc

from txairflowrpc.service.collector import YOUNG_THRESHOLD, CollectorTuning


def test_running_it_freezes_the_start_up_heap_and_spaces_young_collections() -> None:
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    tuning = CollectorTuning()
    tuning.startService()
    try:
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > frozen_before
        assert gc.isenabled()  # cycles are still collected
    finally:
        tuning.stopService()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_cycle_made_while_running_is_still_collected() -> None:
    tuning = CollectorTuning(young=50)
    tuning.startService()
    try:
        class Node:
            pass

        collected: list[int] = []
        gc.callbacks.append(lambda phase, info: collected.append(info["collected"])
                            if phase == "stop" else None)
        try:
            for _ in range(200):
                a, b = Node(), Node()
                a.other, b.other = b, a  # type: ignore[attr-defined]
                del a, b
        finally:
            gc.callbacks.pop()
        assert sum(collected) > 0
    finally:
        tuning.stopService()
