"""The POP3 session states of RFC 1939 and which commands each one accepts.

This table is the only place that says what a state allows; the protocol asks
:func:`refusal` before dispatching a command.
"""

from __future__ import annotations

__all__ = ["AUTHORIZATION", "TRANSACTION", "UPDATE", "ALLOWED", "refusal"]

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"
UPDATE = "UPDATE"

ALLOWED: dict[str, frozenset[str]] = {
    # RFC 1939 section 4, RFC 2449 (CAPA), RFC 2595 (STLS), RFC 5034 (AUTH).
    AUTHORIZATION: frozenset({"USER", "PASS", "APOP", "AUTH", "STLS", "CAPA", "QUIT"}),
    # RFC 1939 section 5, plus the optional TOP and UIDL (section 7) and CAPA.
    # XTND: the OpenVMS server's extension verbs (XTND STATS), after login.
    TRANSACTION: frozenset({"STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "NOOP", "RSET",
                            "CAPA", "QUIT", "XTND"}),
    # Once QUIT has started the update nothing more is read.
    UPDATE: frozenset(),
}

_KNOWN = frozenset().union(*ALLOWED.values())


def refusal(state: str, verb: str) -> str | None:
    """Why ``verb`` cannot run in ``state``, as client text; None when it may run."""
    if verb in ALLOWED[state]:
        return None
    if verb not in _KNOWN:
        return f'unknown command "{verb}"'
    if state == AUTHORIZATION:
        return f"not logged in: {verb} needs USER/PASS or APOP first"
    if state == TRANSACTION:
        return f"already logged in: {verb} is only valid before login"
    return "the session is ending"
