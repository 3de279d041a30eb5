"""
What one call learns on its way through, for its audit record.

The dispatcher sets `current` while it starts a handler; every coroutine
the handler starts copies that context (Twisted runs each coroutine in a
copy of the context it was created in), so the Airflow client can note the
status Airflow answered without being handed the call explicitly.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Callable, TypeVar

import attrs


@attrs.define
class CallTrace:
    #: "allowed" once the policy allowed the call, "denied" if it refused it;
    #: "invalid" if the call never reached the policy (bad name or params).
    decision: str = "invalid"
    reason: str | None = None
    #: The HTTP status of the last answer Airflow gave for this call.
    airflow_status: int | None = None
    #: The size in bytes of that answer's body.
    airflow_bytes: int = 0
    #: The Airflow account the call reached (or would reach) Airflow as.
    airflow_user: str | None = None
    #: The arguments as checked (what the handler got), once they passed.
    checked: tuple[Any, ...] | None = None
    #: What the call made in Airflow that its arguments do not name (the id
    #: of a backfill, of a run Airflow named): recorded on the call's record.
    created: dict[str, Any] | None = None
    #: When the call's deadline (a multicall's, for its calls) runs out, in
    #: the clock's seconds; None: no deadline known.
    deadline: float | None = None


current: ContextVar[CallTrace | None] = ContextVar("txairflowrpc_call", default=None)

T = TypeVar("T")


def started_in(trace: CallTrace, start: Callable[[], T]) -> T:
    """
    ``start()`` with ``trace`` as `current`: whatever it starts (a coroutine
    keeps a copy of the context it was made in) notes into ``trace``, not
    into the caller's.
    """
    token = current.set(trace)
    try:
        return start()
    finally:
        current.reset(token)


def note_airflow_status(status: int, size: int | None = None) -> None:
    """Note Airflow's answer (its status, and its body's size if known) for this call."""
    trace = current.get()
    if trace is not None:
        trace.airflow_status = status
        if size is not None:
            trace.airflow_bytes = size
