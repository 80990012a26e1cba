"""SASL mechanisms for the POP3 AUTH command (RFC 5034): PLAIN, CRAM-MD5 and SCRAM-SHA-256.

This module is pure: it parses and produces the decoded octets of each exchange
step and builds twisted.cred credentials, but does no I/O, logging or base64 on the
wire.  The protocol layer sends each :class:`Challenge` as ``+ base64(data)``,
handles ``*`` cancellation, and hands :class:`Done` credentials to the portal.

CRAM-MD5 and SCRAM-SHA-256 are checked against the user's ``POP_SECRET.DAT``
shared secret (like APOP); PLAIN yields ordinary user name/password credentials.
Every malformed or unacceptable client message raises :class:`SASLFailure`, whose
text is safe to show to the client.
"""

from __future__ import annotations

import abc
import base64
import binascii
import hashlib
import hmac
import secrets
import stringprep
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from twisted.cred.credentials import IUsernameHashedPassword, UsernamePassword
from zope.interface import implementer

__all__ = [
    "MAX_STEP_OCTETS", "MECHANISMS", "SCRAM_ITERATIONS", "Challenge", "CramMD5", "CramMD5Credentials",
    "Done", "ISharedSecretCredentials", "Mechanism", "Plain", "SASLFailure", "ScramCredentials",
    "ScramSHA256", "Step", "make_mechanism", "saslprep",
]

# Largest decoded client message accepted in one step.  PLAIN's three fields must
# each accept 255 octets (RFC 4616), 767 in all; SCRAM messages are far shorter.  A
# cap keeps a hostile client from making us parse or hash megabytes.
MAX_STEP_OCTETS = 1024
# RFC 7677 section 4: the iteration count SHOULD be at least 4096; clients such as
# Dovecot's refuse fewer, so this is both the default and the minimum.
SCRAM_ITERATIONS = 4096
# Random octets in the server nonce and the salt.  RFC 5802 wants an unpredictable
# nonce: 144 bits, a multiple of 3 octets so its base64 has no "=" padding.  A
# 128-bit salt is the customary size (RFC 7677's example uses one).
NONCE_ENTROPY = 18
SALT_OCTETS = 16
_SHA256_OCTETS = 32


class SASLFailure(Exception):
    """The client's SASL data is malformed or unacceptable.

    ``str()`` is client-facing text: it names no secret and no class.
    """


class ISharedSecretCredentials(IUsernameHashedPassword):
    """Credentials checked against the user's POP_SECRET.DAT shared secret (APOP, CRAM-MD5, SCRAM)."""


def saslprep(text: str, *, allow_unassigned: bool = False) -> str:
    """Prepare ``text`` with the SASLprep profile of stringprep (RFC 4013).

    RFC 5802's Normalize() treats the SCRAM password as a stored string, so
    unassigned code points are prohibited unless ``allow_unassigned`` (a query).
    Normalization uses Unicode 3.2, the version the stringprep tables follow.

    Raises:
        ValueError: the text contains a prohibited character or fails the bidi rules.
    """
    mapped = "".join(" " if stringprep.in_table_c12(c) else c
                     for c in text if not stringprep.in_table_b1(c))
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    prohibited = [stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
                  stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9]
    if not allow_unassigned:
        prohibited.append(stringprep.in_table_a1)
    if any(test(c) for c in prepared for test in prohibited):
        raise ValueError("prohibited character")
    # RFC 3454 section 6: right-to-left text must not mix in left-to-right
    # characters, and must begin and end with a right-to-left character.
    if any(stringprep.in_table_d1(c) for c in prepared):
        if any(stringprep.in_table_d2(c) for c in prepared):
            raise ValueError("mixed bidirectional text")
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise ValueError("bad bidirectional text")
    return prepared


def _prepared_secret(secret: bytes) -> bytes:
    """The shared secret as SCRAM's Normalize() wants it, or the raw octets.

    POP_SECRET.DAT holds octets, not necessarily UTF-8 text.  A secret that is not
    UTF-8, that SASLprep prohibits, or that SASLprep maps to nothing is used as it
    is: refusing it would lock its owner out of SCRAM, and a client typing the same
    octets computes the same key when its own SASLprep step fails likewise.
    """
    try:
        prepared = saslprep(secret.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError is a ValueError too
        return secret
    return prepared.encode("utf-8") if prepared else secret


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _b64decode(value: bytes, what: str) -> bytes:
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except binascii.Error:
        raise SASLFailure(f"malformed {what}") from None


def _utf8_name(value: bytes, what: str) -> bytes:
    """``value`` checked to be a non-empty UTF-8 name without NUL."""
    if not value or b"\0" in value:
        raise SASLFailure(f"empty or malformed {what}")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLFailure(f"{what} is not UTF-8") from None
    return value


@implementer(ISharedSecretCredentials)
class CramMD5Credentials:
    """A CRAM-MD5 attempt (RFC 2195), checked against the shared secret.

    Attributes:
        username: the user name the client sent.
        challenge: the server's ``<...>`` challenge.
        response: the client's 32 hex digits, lower-cased.
    """

    def __init__(self, username: bytes, challenge: bytes, response: bytes) -> None:
        self.username = username
        self.challenge = challenge
        self.response = response.lower()

    def checkPassword(self, secret: bytes) -> bool:
        """True if ``secret`` keyed the client's HMAC-MD5 of the challenge."""
        expected = hmac.new(secret, self.challenge, hashlib.md5).hexdigest().encode("ascii")
        return hmac.compare_digest(expected, self.response)


@implementer(ISharedSecretCredentials)
class ScramCredentials:
    """A SCRAM-SHA-256 attempt (RFC 5802, RFC 7677), checked against the shared secret.

    Attributes:
        username: the user name from the client-first message, escapes decoded.
        salt: the salt the server sent.
        iterations: the iteration count the server sent.
        auth_message: RFC 5802's AuthMessage (the three messages, comma-joined).
        client_proof: the decoded ClientProof.
        server_signature: the ServerSignature once :meth:`checkPassword` succeeded, else None.
    """

    def __init__(self, username: bytes, salt: bytes, iterations: int, auth_message: bytes,
                 client_proof: bytes) -> None:
        self.username = username
        self.salt = salt
        self.iterations = iterations
        self.auth_message = auth_message
        self.client_proof = client_proof
        self.server_signature: bytes | None = None

    def checkPassword(self, secret: bytes) -> bool:
        """True if ``secret`` is the password the client proved it knows.

        On success, :attr:`server_signature` is set so the server can prove in turn
        that it knows the secret; on failure it is cleared.
        """
        salted = hashlib.pbkdf2_hmac("sha256", _prepared_secret(secret), self.salt, self.iterations)
        client_key = _hmac(salted, b"Client Key")
        signature = _hmac(hashlib.sha256(client_key).digest(), self.auth_message)
        expected = bytes(a ^ b for a, b in zip(client_key, signature))
        if not hmac.compare_digest(expected, self.client_proof):
            self.server_signature = None
            return False
        self.server_signature = _hmac(_hmac(salted, b"Server Key"), self.auth_message)
        return True


@dataclass(frozen=True)
class Challenge:
    """Send ``+ base64(data)`` and pass the client's decoded reply to :meth:`Mechanism.respond`."""

    data: bytes


@dataclass(frozen=True)
class Done:
    """The exchange is complete: hand ``credentials`` to ``portal.login``."""

    credentials: object


Step: TypeAlias = Challenge | Done


class Mechanism(abc.ABC):
    """One SASL exchange; a fresh instance serves one AUTH command.

    Subclasses implement :meth:`_start` and :meth:`_respond`.  This base enforces
    the size limit and the order of calls: once the exchange is done or has failed,
    every further call raises :class:`SASLFailure`.
    """

    name: ClassVar[bytes] = b""

    def __init__(self) -> None:
        self._state = "new"  # "new", then "running", then "over" (done or failed)

    def start(self, initial: bytes | None) -> Step:
        """Begin with the initial response (None if the client sent none; b"" for ``=``)."""
        if self._state != "new":
            raise SASLFailure("authentication exchange already started")
        self._state = "running"
        return self._step(lambda: self._start(initial), initial)

    def respond(self, data: bytes) -> Step:
        """Continue with the client's decoded response to the last challenge."""
        if self._state == "new":
            raise SASLFailure("authentication exchange not started")
        if self._state == "over":
            raise SASLFailure("authentication exchange already ended")
        return self._step(lambda: self._respond(data), data)

    def success(self) -> bytes | None:
        """Data to send as a final ``+`` challenge after the credentials were accepted, or None."""
        return None

    def _step(self, handler: Callable[[], Step], data: bytes | None) -> Step:
        """Run one step; a failure or Done ends the exchange."""
        try:
            if data is not None and len(data) > MAX_STEP_OCTETS:
                raise SASLFailure("SASL message too long")
            step = handler()
        except SASLFailure:
            self._state = "over"
            raise
        if isinstance(step, Done):
            self._state = "over"
        return step

    @abc.abstractmethod
    def _start(self, initial: bytes | None) -> Step:
        """The mechanism's first step."""

    @abc.abstractmethod
    def _respond(self, data: bytes) -> Step:
        """The mechanism's next step."""


class Plain(Mechanism):
    """PLAIN (RFC 4616): ``[authzid] NUL authcid NUL passwd`` in one message.

    The password is passed on unprepared: the checker verifies it exactly as it does
    for USER/PASS, so both methods accept the same passwords.
    """

    name = b"PLAIN"

    def _start(self, initial: bytes | None) -> Step:
        return Challenge(b"") if initial is None else self._respond(initial)

    def _respond(self, data: bytes) -> Step:
        fields = data.split(b"\0")
        if len(fields) != 3:
            raise SASLFailure("malformed PLAIN message")
        authzid, authcid, password = fields
        _utf8_name(authcid, "user name")
        if authzid and authzid != authcid:
            raise SASLFailure("authorization identity not supported")
        if not password:
            raise SASLFailure("empty password")
        return Done(UsernamePassword(authcid, password))


class CramMD5(Mechanism):
    """CRAM-MD5 (RFC 2195): the server challenges, the client answers ``user SP hexdigest``.

    Args:
        hostname: the server's host name, for the challenge (ASCII).
        challenge: a fixed challenge, for tests; normally a fresh one is made.
        clock: the time source for the challenge's timestamp.

    Raises:
        ValueError: ``hostname`` is not ASCII.
    """

    name = b"CRAM-MD5"

    def __init__(self, *, hostname: str, challenge: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        if challenge is None:
            # A random part makes the challenge unpredictable, so a response cannot
            # be prepared in advance or replayed; the timestamp is RFC 2195's shape.
            host = hostname.encode("ascii")
            challenge = b"<%d.%d@%s>" % (secrets.randbits(63), int(clock()), host)
        self.challenge = challenge

    def _start(self, initial: bytes | None) -> Step:
        if initial is not None:
            # RFC 2195 defines no initial response: the client cannot answer a
            # challenge it has not seen yet.
            raise SASLFailure("CRAM-MD5 does not allow an initial response")
        return Challenge(self.challenge)

    def _respond(self, data: bytes) -> Step:
        user, space, digest = data.rpartition(b" ")
        if not space or len(digest) != 32 or not all(c in b"0123456789abcdefABCDEF" for c in digest):
            raise SASLFailure("malformed CRAM-MD5 response")
        return Done(CramMD5Credentials(_utf8_name(user, "user name"), self.challenge, digest))


def _attribute(item: bytes, name: bytes) -> bytes:
    """The value of ``name=value``, or SASLFailure if ``item`` is another attribute."""
    if not item.startswith(name + b"="):
        raise SASLFailure(f"expected SCRAM attribute {name.decode()}=")
    return item[2:]


def _check_extensions(items: list[bytes]) -> None:
    """Accept well-formed extensions (ignored) but refuse mandatory ones (RFC 5802 section 5.1)."""
    for item in items:
        if item.startswith(b"m="):
            raise SASLFailure("mandatory SCRAM extensions not supported")
        if len(item) < 2 or not item[:1].isalpha() or item[1:2] != b"=":
            raise SASLFailure("malformed SCRAM attribute")


def _saslname(value: bytes, what: str) -> bytes:
    """Decode RFC 5802's saslname: ``=2C`` is a comma and ``=3D`` an equals sign."""
    pieces = value.split(b"=")
    decoded = [pieces[0]]
    for piece in pieces[1:]:
        escape, rest = piece[:2], piece[2:]
        if escape not in (b"2C", b"3D"):
            raise SASLFailure(f"malformed SCRAM {what}")
        decoded.append((b"," if escape == b"2C" else b"=") + rest)
    return _utf8_name(b"".join(decoded), what)


class ScramSHA256(Mechanism):
    """SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding.

    The salt is random per exchange rather than stored: the secret is kept in clear
    in POP_SECRET.DAT, so a fresh salt reveals nothing, and unknown users get a salt
    just as plausible as known ones.

    Args:
        iterations: the PBKDF2 iteration count (at least :data:`SCRAM_ITERATIONS`).
        nonce_source: returns the printable server nonce given a number of random
            octets to use; for tests.  By default, base64 of that many random octets.
        salt: a fixed salt, for tests; by default a random one.

    Raises:
        ValueError: ``iterations`` is below the RFC 7677 minimum.
    """

    name = b"SCRAM-SHA-256"

    def __init__(self, *, iterations: int = SCRAM_ITERATIONS,
                 nonce_source: Callable[[int], bytes] | None = None, salt: bytes | None = None) -> None:
        super().__init__()
        if iterations < SCRAM_ITERATIONS:
            raise ValueError(f"SCRAM iterations must be at least {SCRAM_ITERATIONS}")
        self.iterations = iterations
        self._nonce_source = nonce_source or (lambda n: base64.b64encode(secrets.token_bytes(n)))
        self.salt = secrets.token_bytes(SALT_OCTETS) if salt is None else salt
        self.credentials: ScramCredentials | None = None
        self._first: tuple[bytes, bytes, bytes, bytes] | None = None  # gs2 header, user, bare, server-first
        self._nonce = b""

    def _start(self, initial: bytes | None) -> Step:
        # Without an initial response, an empty challenge asks for the client-first message.
        return Challenge(b"") if initial is None else self._respond(initial)

    def _respond(self, data: bytes) -> Step:
        return self._client_first(data) if self._first is None else self._client_final(data)

    def _client_first(self, data: bytes) -> Step:
        if not data:
            raise SASLFailure("empty SCRAM client-first message")
        parts = data.split(b",", 2)
        if len(parts) != 3:
            raise SASLFailure("malformed SCRAM client-first message")
        cbind, authzid, bare = parts
        if cbind.startswith(b"p="):
            raise SASLFailure("channel binding not supported")
        if cbind not in (b"n", b"y"):
            raise SASLFailure("malformed SCRAM GS2 header")
        items = bare.split(b",")
        _check_extensions(items[:1])  # a leading m= gets its own message
        if len(items) < 2:
            raise SASLFailure("malformed SCRAM client-first message")
        user = _saslname(_attribute(items[0], b"n"), "user name")
        client_nonce = _attribute(items[1], b"r")
        _check_extensions(items[2:])
        if authzid and _saslname(_attribute(authzid, b"a"), "authorization identity") != user:
            raise SASLFailure("authorization identity not supported")
        if not client_nonce or not all(0x21 <= c <= 0x7E for c in client_nonce):
            raise SASLFailure("malformed SCRAM nonce")
        server_nonce = self._nonce_source(NONCE_ENTROPY)
        if not server_nonce or not all(0x21 <= c <= 0x7E and c != 0x2C for c in server_nonce):
            raise ValueError("nonce_source must return printable ASCII without commas")
        self._nonce = client_nonce + server_nonce
        server_first = b"r=%s,s=%s,i=%d" % (self._nonce, base64.b64encode(self.salt), self.iterations)
        self._first = (cbind + b"," + authzid + b",", user, bare, server_first)
        return Challenge(server_first)

    def _client_final(self, data: bytes) -> Step:
        assert self._first is not None
        gs2_header, user, client_first_bare, server_first = self._first
        items = data.split(b",")
        if len(items) < 3:
            raise SASLFailure("malformed SCRAM client-final message")
        binding = _b64decode(_attribute(items[0], b"c"), "SCRAM channel binding")
        nonce = _attribute(items[1], b"r")
        _check_extensions(items[2:-1])
        proof = _b64decode(_attribute(items[-1], b"p"), "SCRAM client proof")
        if binding != gs2_header:
            raise SASLFailure("SCRAM channel binding data does not match")
        if not hmac.compare_digest(nonce, self._nonce):
            raise SASLFailure("SCRAM nonce mismatch")
        if len(proof) != _SHA256_OCTETS:
            raise SASLFailure("malformed SCRAM client proof")
        without_proof = data[:-len(items[-1]) - 1]
        auth_message = b",".join((client_first_bare, server_first, without_proof))
        self.credentials = ScramCredentials(user, self.salt, self.iterations, auth_message, proof)
        return Done(self.credentials)

    def success(self) -> bytes | None:
        """``v=`` and the ServerSignature, for the final ``+`` challenge (RFC 5034 section 4).

        Raises:
            SASLFailure: the credentials were not (successfully) checked, so the
                server cannot prove itself.
        """
        if self.credentials is None or self.credentials.server_signature is None:
            raise SASLFailure("SCRAM authentication not complete")
        return b"v=" + base64.b64encode(self.credentials.server_signature)


# In preference order, strongest first: SCRAM never reveals the secret and resists
# replay; CRAM-MD5 resists replay only; PLAIN sends the password itself.
MECHANISMS: tuple[bytes, ...] = (b"SCRAM-SHA-256", b"CRAM-MD5", b"PLAIN")


def make_mechanism(name: bytes, *, hostname: str) -> Mechanism:
    """A fresh mechanism for ``name`` (case-insensitive); ``hostname`` goes into CRAM-MD5's challenge.

    Raises:
        SASLFailure: ``name`` is not one of :data:`MECHANISMS`.
    """
    factories: dict[bytes, Callable[[], Mechanism]] = {
        ScramSHA256.name: ScramSHA256, CramMD5.name: lambda: CramMD5(hostname=hostname), Plain.name: Plain}
    factory = factories.get(name.upper())
    if factory is None:
        raise SASLFailure("unknown SASL mechanism")
    return factory()
