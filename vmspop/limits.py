"""Per-address defences against password guessing and connection floods.

Everything here is bookkeeping on the reactor thread: no sleeping, no blocking.
Delays are applied by the caller with the reactor's clock, and an address has at
most :data:`CHECKS_PER_ADDRESS` login checks running, so a flood from one address
occupies a bounded share of the hashing threads and cannot starve logins from
anywhere else.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

__all__ = ["AddressPenalties", "address_key"]

#: Dovecot's anvil doubles the delay 2, 4, 8 and stops at 15 s; so do we.
MAX_PENALTY = 15.0
#: Failures older than this are forgotten (Dovecot keeps its penalty for an hour
#: of silence; a shorter memory forgives a user who mistyped yesterday).
PENALTY_WINDOW = 15 * 60.0
#: Addresses remembered at most, oldest forgotten first: memory stays bounded
#: whatever a distributed guesser does.
MAX_TRACKED_ADDRESSES = 100_000
#: Login checks one address may have running at once.  Twisted's thread pool has 10
#: threads: a flood from one address holds at most this many, while an office behind
#: one NAT address still logs in concurrently.
CHECKS_PER_ADDRESS = 4
#: A client that repeats the same wrong password (a saved, outdated one) is not a
#: guesser; Dovecot keeps the last 10 and does not grow the penalty for them.
REMEMBERED_ATTEMPTS = 10


@functools.lru_cache(maxsize=4096)  # parsed up to four times per connection; few distinct clients
def address_key(address: str) -> str:
    """The unit a penalty applies to: an IPv4 address, or an IPv6 /64 (one site's network)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class _Record:
    __slots__ = ("failures", "last", "attempts", "gate")

    def __init__(self) -> None:
        self.failures = 0
        self.last = 0.0
        self.attempts: list[int] = []
        self.gate = defer.DeferredSemaphore(CHECKS_PER_ADDRESS)


class AddressPenalties:
    """Failed-login penalties and login serialisation per client address.

    Args:
        clock: for the age of failures.
        base_delay: the delay after a first failure (``--auth-failure-delay``);
            each further recent failure doubles it, up to :data:`MAX_PENALTY`.
    """

    def __init__(self, clock: IReactorTime, base_delay: float) -> None:
        self.clock = clock
        self.base_delay = base_delay
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def _record(self, address: str) -> _Record:
        key = address_key(address)
        record = self._records.get(key)
        now = self.clock.seconds()
        if record is None:
            record = self._records[key] = _Record()
            while len(self._records) > MAX_TRACKED_ADDRESSES:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(key)
        if record.failures and now - record.last > PENALTY_WINDOW:
            record.failures = 0
            record.attempts.clear()
        return record

    def delay(self, address: str) -> float:
        """Seconds to hold the answer to a failed login from ``address``."""
        if self.base_delay <= 0:
            return 0.0
        record = self._record(address)
        return min(MAX_PENALTY, self.base_delay * 2 ** record.failures)

    def failed(self, address: str, fingerprint: int) -> None:
        """Count a failure, unless it repeats one of the last attempts from that address.

        Args:
            address: the client address.
            fingerprint: a hash of the user and credentials tried (never stored otherwise).
        """
        record = self._record(address)
        record.last = self.clock.seconds()
        if fingerprint in record.attempts:
            return
        record.attempts = (record.attempts + [fingerprint])[-REMEMBERED_ATTEMPTS:]
        record.failures += 1

    def succeeded(self, address: str) -> None:
        """A correct login clears the address's penalty."""
        record = self._record(address)
        record.failures = 0
        record.attempts.clear()

    def serialized(self, address: str, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``f`` once fewer than :data:`CHECKS_PER_ADDRESS` checks from that address run."""
        return self._record(address).gate.run(f, *args)
