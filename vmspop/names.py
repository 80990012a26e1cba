"""Maildir file names: their parts, the arrival time they record, and the UIDL made from them.

A name is ``<base>,S=<stored octets>,W=<wire octets>[:2,<flags>]`` (Dovecot's size
fields).  The base never changes once vmspop has seen the message, and every move
keeps it, so the UIDL, derived from the base and the arrival time it starts with,
survives sessions, restarts and the NEWMAIL-to-MAIL move.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from dataclasses import dataclass

__all__ = ["MAX_UID_LENGTH", "StoredMessage", "arrival_of", "make_uid", "parse_name", "size_field", "format_uid_tail", "uid_parts", "uid_tail"]

#: RFC 1939 section 7: a UIDL is 1-70 characters.
MAX_UID_LENGTH = 70

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
# base, then Dovecot-style ",X=value" fields, then ":2,FLAGS".
NAME = re.compile(r"^(?P<base>[^:/]+?)(?P<fields>(?:,[A-Za-z]=[^,:/]*)*)(?::(?P<info>.*))?$")
ARRIVAL = re.compile(r"^(?P<sec>\d{1,12})\.(?:[^.]*?M(?P<usec>\d{1,6}))?")
# RFC 4648 base32, ten bits (two characters) at a time: base64.b32encode is pure
# Python and was a fifth of the time of listing a large folder.
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_B32_PAIRS = [a + b for a in _B32 for b in _B32]
_TWO_DIGITS = [f"{i:02d}" for i in range(100)]


@dataclass(frozen=True)
class StoredMessage:
    """One message file as seen when a session's snapshot was taken.

    Attributes:
        path: the file's full path.
        base: the unique part of the file name; stable for the message's life.
        arrival: the arrival time, seconds since the epoch (UTC).
        physical: octets stored on disk.
        wire: octets as sent by RETR: CRLF line ends, before byte-stuffing.
        uid: the UIDL, "user name + date of arrival" made unique.
    """

    path: str
    base: str
    arrival: float
    physical: int
    wire: int
    uid: str


def make_uid(user: str, arrival: float, base: str) -> str:
    """The UIDL of a message: the VMS "user name + date of arrival", made unique.

    The arrival time is written the way the VMS server wrote times in its APOP
    challenge (``JONES_06_APR_1999_06_02_31_15``: UTC, hundredths of a second),
    followed by eight characters derived from the file's unique base name (base32
    of the first 40 bits of its SHA-256), so two messages that arrive in the same
    hundredth still differ and a UID is never reused: a new message always has a
    new base.
    """
    uid = f"{user.upper()}_{uid_tail(arrival, base.encode('utf-8', 'surrogateescape'))}"
    if len(uid) > MAX_UID_LENGTH:
        raise ValueError(f"user name {user!r} too long for a {MAX_UID_LENGTH}-character UIDL")
    return uid


def uid_tail(arrival: float, base: bytes) -> str:
    """The UIDL after ``USER_``: the arrival time and the tag; ``base`` as UTF-8 (surrogateescape)."""
    return format_uid_tail(*uid_parts(arrival, base))


def uid_parts(arrival: float, base: bytes) -> tuple[int, int]:
    """What a UIDL is made of, as two numbers: days since 1970, and the hundredths of
    that day times 2**40 plus the 40-bit tag.  :func:`format_uid_tail` writes them."""
    seconds = int(arrival)
    hundredths = int(round((arrival - seconds) * 100))
    if hundredths == 100:
        # .995 and up round into the next second; without the carry the date would
        # read _00 of the same second, almost a second early.
        seconds, hundredths = seconds + 1, 0
    days, rest = divmod(seconds, 86400)
    tag = int.from_bytes(hashlib.sha256(base).digest()[:5], "big")
    return days, (rest * 100 + hundredths) << 40 | tag


def format_uid_tail(days: int, rest: int) -> str:
    """The text of :func:`uid_parts`' numbers: ``DD_MON_YYYY_HH_MM_SS_CC_TAG``."""
    hours, rest_of_hour = divmod(rest >> 40, 360000)
    minutes, rest_of_minute = divmod(rest_of_hour, 6000)
    secs, hundredths = divmod(rest_of_minute, 100)
    n = rest & 0xFF_FFFF_FFFF
    two, pairs = _TWO_DIGITS, _B32_PAIRS
    # Joined from tables rather than formatted: a UIDL listing of 100,000 messages
    # computes 100,000 of these on the reactor thread.
    return "_".join((_date(days), two[hours], two[minutes], two[secs], two[hundredths],
                     pairs[n >> 30] + pairs[(n >> 20) & 1023] + pairs[(n >> 10) & 1023] + pairs[n & 1023]))


@functools.lru_cache(maxsize=4096)
def _date(days: int) -> str:
    t = time.gmtime(days * 86400)
    return f"{t.tm_mday:02d}_{_MONTHS[t.tm_mon - 1]}_{t.tm_year:04d}"


def parse_name(name: str) -> tuple[str, dict[str, str], str | None] | None:
    """Split a Maildir file name into its base, ``,X=`` fields and ``:info``; None if foreign."""
    match = NAME.match(name)
    if match is None:
        return None
    fields = dict(f.split("=", 1) for f in match["fields"].split(",")[1:])
    return match["base"], fields, match["info"]


def arrival_of(base: str) -> float | None:
    """The arrival time a base starts with (``<seconds>.`` and any ``M<microseconds>``), or None."""
    match = ARRIVAL.match(base)
    if match is None:
        return None
    usec = match["usec"]
    # Maildir's M<n> is the microsecond counter in plain decimal (Dovecot and Postfix
    # do not zero-pad it): M5 is 5 microseconds, not half a second.
    return int(match["sec"]) + (int(usec) / 1e6 if usec else 0.0)


def size_field(text: str | None) -> int | None:
    """The value of an ``S=`` or ``W=`` field, or None if it is missing or not a number."""
    if text is None or not text.isdigit():
        return None
    return int(text)
