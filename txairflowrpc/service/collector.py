"""
How Python's cyclic garbage collector is set for a serving gateway.

Almost everything a call allocates is freed by reference counting as soon as
the call ends; the cyclic collector only needs to find the few cycles
(a `Failure` and its traceback, say).  With CPython's defaults it ran a
young collection every 700 net allocations: at 64 calls in flight about a
hundred times a second, each promoting the live calls' objects to the older
generations, whose full collections then walked the whole heap, modules
and all.  Measured under the benchmark's c=64 load (``gc.callbacks`` timing
every collection in the running twistd), that was 84 µs of 972 µs of CPU
per call, 8.6%.

`CollectorTuning` therefore, once the service is built and starting:

- collects once and freezes what exists (`gc.freeze`): modules, the
  configuration, the method table, the listeners live as long as the
  process, so no later collection walks them again;
- starts a young collection only after `YOUNG_THRESHOLD` net allocations
  (100,000 instead of 700), keeping the older generations' defaults.  At
  10,000 a c=512 load still paid 38 µs per call for it (``gc.callbacks``
  timing in the running twistd: 202 young collections of 4.5 ms in 10 s,
  each walking the calls in flight, and their promotion to the middle
  generation).  Likely why so many: CPython counts net allocations but
  never below zero, so frees that come while the count is at zero are lost
  to it, and at c=512 hundreds of callers of one shared read end together
  while the next wave of calls allocates.  At 100,000,
  in runs alternating the two (c=512, 3 rounds of 8 s, two runs, both with
  the collections below): 257-259 against 283-290 µs of CPU per call with
  shared reads, 548-606 against 631-659 with none; the idle connections'
  peak after a c=1/64/512 load unchanged (147.8-148.8 against 147.8-150.1
  MB, without the collections below);
- collects the young and middle generations every `YOUNG_EVERY_SECONDS`
  from the reactor, so that garbage made faster than calls allocate (a
  flood of connections that open and close) waits at most that long
  whatever the threshold: against 1,500 connects a second from 64 sources
  for 10 s each (bare, ClientHello, a corrupt record, a wrong token; the
  TLS layer's own cycle already broken, see `gate.site`), the
  young threshold alone at 100,000 let the RSS climb 10-13 MB during the
  flood (1.2-2.2 MB at 10,000); with these collections 2.1-4.1 MB.  At
  c=512 each walks the calls in flight, about 1% of a core;
- runs a full collection every `FULL_EVERY_SECONDS` from the reactor.  A
  call leaves no cycle behind, but a closed connection can (a few small
  objects about its transport), and so does a call cancelled
  mid-flight; a long-lived connection sits in the oldest generation, which
  the spaced young collections would reach only after about a million
  allocations.  Without this, the 512 connections of a c=512 run stayed in
  memory after it (16 MB more RSS, measured), and an idle gateway would
  never have freed them.  After the freeze a full collection walks only
  what was made since start-up;
- then, with glibc, hands the freed heap back to the system
  (``malloc_trim``): after that c=512 run the gateway's RSS went back from
  106 to 78 MB.  About 1 ms when there is nothing to give back, some 30 ms
  after a burst that freed hundreds of MB.

Under the same c=64 load it then spent 1 µs per call collecting.  Stopping
the service puts the collector back as it was (tests start and stop
services in one process).
"""

from __future__ import annotations

import ctypes
import gc
from typing import Callable

from twisted.application import service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

#: Net allocations of container objects between two young collections.
YOUNG_THRESHOLD = 100_000
#: Seconds between two collections of the young and middle generations.
YOUNG_EVERY_SECONDS = 1.0
#: Seconds between two full collections.
FULL_EVERY_SECONDS = 5.0


def _trimmer() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_malloc_trim = _trimmer()


class CollectorTuning(service.Service):
    """
    Freezes the start-up heap, spaces young collections by allocations,
    collects the young and middle generations every ``young_every`` seconds
    of ``clock`` and everything every ``full_every`` seconds while running.

    :param trim: gives freed heap back to the system after each full
        collection (glibc's ``malloc_trim``; None where there is none).
    """

    def __init__(
        self, clock: IReactorTime, young: int = YOUNG_THRESHOLD,
        full_every: float = FULL_EVERY_SECONDS,
        trim: Callable[[int], int] | None = _malloc_trim,
        young_every: float = YOUNG_EVERY_SECONDS,
    ) -> None:
        self._young = young
        self._trim = trim
        self._saved: tuple[int, int, int] | None = None
        self._full = LoopingCall(self._collect)
        self._full.clock = clock
        self._full_every = full_every
        self._recent = LoopingCall(gc.collect, 1)
        self._recent.clock = clock
        self._young_every = young_every

    def startService(self) -> None:
        super().startService()
        self._saved = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(self._young, *self._saved[1:])
        self._recent.start(self._young_every, now=False)
        self._full.start(self._full_every, now=False)

    def _collect(self) -> None:
        gc.collect()
        if self._trim is not None:
            self._trim(0)

    def stopService(self) -> None:
        super().stopService()
        for timer in (self._recent, self._full):
            if timer.running:
                timer.stop()
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            gc.unfreeze()
            self._saved = None
