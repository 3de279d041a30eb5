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

    def test_the_delay_stays_at_its_cap_however_many_failures_come(self) -> None:
        """2**(count - free) overflowed a float after about 1,030 failures in the window."""
        backoff = Backoff(Clock(), maximum=30)
        delays = [backoff.failed("10.0.0.1") for _ in range(5000)]
        self.assertEqual(delays[-1], 30)
        self.assertEqual(max(delays), 30)

    def test_an_ipv6_source_is_its_64(self) -> None:
        """A host holds a whole /64: spraying from it is one source."""
        backoff = Backoff(Clock(), maximum=30)
        delays = [backoff.failed(f"2001:db8:1:2::{n:x}") for n in range(1, 8)]
        self.assertEqual(delays[5:], [0.5, 1.0])
        self.assertEqual(backoff.failed("2001:db8:1:3::1"), 0.0)  # another /64
        mapped = [backoff.failed("::ffff:10.0.0.9") for _ in range(5)]
        self.assertEqual(mapped + [backoff.failed("10.0.0.9")], [0.0] * 5 + [0.5])

    def test_past_the_table_s_size_the_oldest_window_is_forgotten(self) -> None:
        from txairflowrpc.identity.backoff import MAX_SOURCES
        clock = Clock()
        backoff = Backoff(clock, maximum=30, free=0)
        backoff.failed("10.9.9.9")  # the oldest window
        clock.advance(1)
        backoff.failed("10.8.8.8")
        clock.advance(900)
        self.assertEqual(backoff.failed("10.9.9.9"), 0.5)  # a new window: now the latest
        for n in range(MAX_SOURCES - 1):
            backoff.failed(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}")
        # 10.8.8.8's window was the oldest, so it went; 10.9.9.9's did not.
        self.assertEqual(backoff.failed("10.9.9.9"), 1.0)
        self.assertEqual(backoff.failed("10.8.8.8"), 0.5)


def test_the_ipv6_source_prefix_decides_what_one_source_is() -> None:
    from txairflowrpc.identity.backoff import source_key

    assert source_key("2001:db8:1:2::7") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:2::7", 48) == "2001:db8:1::/48"
    assert source_key("2001:db8:1:2::7", 128) == "2001:db8:1:2::7"
    assert source_key(source_key("2001:db8:1:2::7")) == "2001:db8:1:2::/64"  # a key is its own
    assert source_key("::ffff:10.0.0.9", 128) == "10.0.0.9"
