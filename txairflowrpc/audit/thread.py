"""
The audit thread: the one thread on which the audit log's file work runs.

A call waits for its record to reach the disk, so the hand-off to this
thread and back is on every call's path.  It is a plain thread blocked on
a `queue.SimpleQueue` (a lock in C) that hands each result back with
``callFromThread`` and goes straight back to waiting: measured at c=1
(``make phases``), the hand-off to the thread took about a quarter less
than through a one-thread `twisted.python.threadpool.ThreadPool`, whose
worker runs more Python, holding the GIL the reactor is waiting for.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

_STOP = None


class WriterStopped(Exception):
    """Work handed to the audit thread after it was stopped."""


class AuditThread:
    """
    Runs blocking functions one at a time, in the order given, on one
    thread of its own; each call gives a Deferred of the function's result
    (or its failure), fired on the reactor.

    Work given before `start` waits for it.  `stop` lets the thread finish
    what was given before, then joins it; work given after fails with
    `WriterStopped`.
    """

    def __init__(self, reactor: IReactorFromThreads, name: str = "audit") -> None:
        self._reactor = reactor
        self._name = name
        self._work: queue.SimpleQueue[tuple[Callable[[], Any], Deferred[Any]] | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._stopped = False

    def __call__(self, work: Callable[[], Any]) -> Deferred[Any]:
        if self._stopped:
            return fail(WriterStopped())
        d: Deferred[Any] = Deferred()
        self._work.put((work, d))
        return d

    def start(self) -> None:
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Run what was given, then end the thread (blocks until it has)."""
        if self._stopped:
            return
        self._stopped = True
        self._work.put(_STOP)
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        take, back = self._work.get, self._reactor.callFromThread
        while True:
            item = take()
            if item is _STOP:
                return
            work, d = item
            try:
                result = work()
            except BaseException:
                back(d.errback, Failure())
            else:
                back(d.callback, result)
