"""The back-off that slows down a source which keeps failing to authenticate."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txairflowrpc.identity.backoff import Backoff


class BackoffTests(SynchronousTestCase):
    def test_failures_from_one_source_are_slowed_down_up_to_a_cap(self) -> None:
        clock = Clock()
        backoff = Backoff(clock, maximum=30)
        delays = [backoff.failed("10.0.0.1") for _ in range(12)]
        self.assertEqual(delays[:5], [0.0] * 5)
        self.assertEqual(delays[5:9], [0.5, 1.0, 2.0, 4.0])
        self.assertEqual(delays[-1], 30)
        self.assertEqual(backoff.failed("10.0.0.2"), 0.0)  # another source is not slowed
        clock.advance(901)
        self.assertEqual(backoff.failed("10.0.0.1"), 0.0)  # the window passed
