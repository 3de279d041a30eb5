"""
Which Airflow account a caller's calls reach Airflow as.

By default every call uses the gateway's own (service) account.  A
principal configured with an Airflow account of its own
(``[principals.NAME] airflow_user``) calls Airflow as that account, so that
Airflow's own roles apply as a second gate and Airflow's audit log and a
run's ``triggering_user_name`` name the real user.

Each Airflow account has an `Account`: a client of its own (its login and
JWT, its connection pool, its shared reads and read cache) and a run
watcher of its own, so that reads and waits are only ever shared between
callers that use the same account.  What protects Airflow as a whole (the
circuit breaker, the cap on requests in flight) is shared by all of them;
the factory that makes an `Account` decides that.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import attrs

from .client import AirflowClient
from .watch import RunWatcher


@attrs.define(eq=False)
class Account:
    """One Airflow account's client and run watcher; ``close`` releases its connections."""

    client: AirflowClient
    watcher: RunWatcher
    close: Callable[[], Any] = attrs.field(default=lambda: None, repr=False)

    @property
    def user(self) -> str:
        return self.client.account


#: ``make(user, password)``: a new `Account` that logs in as ``user``.
MakeAccount = Callable[[str, str], Account]


class Accounts:
    """
    Principal name -> the `Account` its calls use; the service account for
    any principal not mapped to one of its own.

    :param service: the gateway's own account.
    :param make: builds the account of a caller's Airflow user (None: only
        the service account is ever used).
    """

    def __init__(self, service: Account, make: MakeAccount | None = None) -> None:
        self.service = service
        self._make = make
        self._by_user: dict[str, Account] = {}
        #: The password each account was made with, to notice a new one on reload.
        self._passwords: dict[str, str] = {}
        self._by_principal: dict[str, Account] = {}
        #: What the accounts no longer in use counted, so that the sums never go down.
        self._retired = {"logins": 0, "reads": 0, "reads_upstream": 0, "waits": 0, "polls": 0}

    def __repr__(self) -> str:
        return f"<Accounts service={self.service.user!r} users={sorted(self._by_user)!r}>"

    def configure(self, principals: Mapping[str, tuple[str, str]]) -> list[Account]:
        """
        Map principals to Airflow accounts: ``principals`` is principal name
        -> (Airflow user, password).  An account whose user and password are
        unchanged is kept (its JWT, pool and cache with it); a new or
        changed one is made; the service account's user maps to the service
        account.  Returns the accounts no longer used (the caller closes
        them once the calls in flight on them are done, or at once).
        """
        by_user: dict[str, Account] = {}
        passwords: dict[str, str] = {}
        by_principal: dict[str, Account] = {}
        for name, (user, password) in principals.items():
            if user == self.service.user:
                by_principal[name] = self.service
                continue
            account = by_user.get(user)
            if account is None:
                kept = self._by_user.get(user)
                if kept is not None and self._passwords.get(user) == password:
                    account = kept
                elif self._make is None:
                    raise ValueError("these accounts cannot make a client for an Airflow user")
                else:
                    account = self._make(user, password)
                by_user[user], passwords[user] = account, password
            by_principal[name] = account
        dropped = [a for u, a in self._by_user.items() if by_user.get(u) is not a]
        for account in dropped:
            for name, count in _counts(account).items():
                self._retired[name] += count
        self._by_user, self._passwords, self._by_principal = by_user, passwords, by_principal
        return dropped

    def for_principal(self, name: str | None) -> Account:
        """The account the calls of principal ``name`` use."""
        if name is None:
            return self.service
        return self._by_principal.get(name, self.service)

    def __iter__(self) -> Iterator[Account]:
        """Every account in use, the service account first."""
        yield self.service
        yield from self._by_user.values()

    # -- summed over the accounts, for the metrics --------------------------

    def _sum(self, name: str) -> int:
        return self._retired[name] + sum(_counts(a)[name] for a in self)

    @property
    def logins(self) -> int:
        return self._sum("logins")

    @property
    def reads(self) -> int:
        return self._sum("reads")

    @property
    def reads_upstream(self) -> int:
        return self._sum("reads_upstream")

    @property
    def waits(self) -> int:
        return self._sum("waits")

    @property
    def polls(self) -> int:
        return self._sum("polls")

    @property
    def watched(self) -> int:
        return sum(a.watcher.watched for a in self)


def _counts(account: Account) -> dict[str, int]:
    client, watcher = account.client, account.watcher
    return {"logins": client.logins, "reads": client.reads,
            "reads_upstream": client.reads_upstream, "waits": watcher.waits,
            "polls": watcher.polls}
