"""
What the hot path tells the metrics, and nothing more.

The dispatcher and the Airflow client are handed a meter and call it once
per call or per exchange with values they already hold (no formatting, no
label building: that is the meter's business, done with cached children in
`txairflowrpc.service.metrics`).  The layers below ``service`` know only
these protocols, so they never import a metrics library; `UNMETERED` is what
they get when nobody measures (tests, tools).
"""

from __future__ import annotations

from typing import Protocol


class CallMeter(Protocol):
    def call_started(self) -> None:
        """A call entered the pipeline (alone, or inside a multicall)."""

    def call_finished(
        self, method: str | None, principal: object, fault: int | None, cancelled: bool,
        seconds: float,
    ) -> None:
        """
        A call has its outcome: ``method`` is the registered name (None: no
        such method), ``fault`` the fault code (None: ok or cancelled).
        """

    def answer_failed(self) -> None:
        """A request's answer could not be made: it was answered -32603 (a bug)."""


class UpstreamMeter(Protocol):
    def upstream_answered(self, http_method: str, outcome: int | str, seconds: float) -> None:
        """
        One exchange with Airflow ended: ``outcome`` is the HTTP status, or
        ``"timeout"``, ``"unreachable"``, ``"error"`` (garbage) or
        ``"cancelled"`` (the caller gave up).
        """


class _Unmetered:
    """Measures nothing."""

    def call_started(self) -> None:
        pass

    def call_finished(self, method: str | None, principal: object, fault: int | None,
                      cancelled: bool, seconds: float) -> None:
        pass

    def answer_failed(self) -> None:
        pass

    def upstream_answered(self, http_method: str, outcome: int | str, seconds: float) -> None:
        pass


UNMETERED = _Unmetered()
