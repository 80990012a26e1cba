"""Password hash schemes in Dovecot's ``{SCHEME}hash`` notation.

New hashes are always Argon2id.  Verification also understands the schemes an
existing Dovecot passwd-file is likely to contain, so that accounts can be
migrated as they are.  The server never rewrites the password file;
``vmspop passwd`` replaces a hash with Argon2id.

Everything here is pure and blocking, and Argon2 is deliberately slow: callers
run these functions in a thread, never on the reactor.

Passwords are ``str`` decoded by the caller from the wire as UTF-8 with
``surrogateescape``; they are encoded back the same way before hashing, so a
password that is not valid UTF-8 still hashes its exact original bytes.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "ARGON2_MEMORY_COST_KIB",
    "ARGON2_PARALLELISM",
    "ARGON2_TIME_COST",
    "MAX_PASSWORD_BYTES",
    "UnsupportedHash",
    "dummy_hash",
    "hash_password",
    "is_instant",
    "needs_rehash",
    "sha_crypt",
    "verify_password",
]

# OWASP's minimum recommendation for Argon2id (m=19 MiB, t=2, p=1): still
# memory-hard enough to make GPU guessing expensive, while bounding the memory
# each concurrent login costs the server to 19 MiB.
ARGON2_MEMORY_COST_KIB: Final = 19456
ARGON2_TIME_COST: Final = 2
ARGON2_PARALLELISM: Final = 1
# argon2-cffi's defaults; 128-bit salts and 256-bit tags are plenty.
ARGON2_HASH_LEN: Final = 32
ARGON2_SALT_LEN: Final = 16

# Far above any real password (RFC 2449 limits a POP3 command line to 255
# octets), yet small enough to bound SHA-crypt, whose cost grows with the
# square of the password length: an attacker must not be able to buy minutes
# of CPU with one long PASS command.
MAX_PASSWORD_BYTES: Final = 1024

# bcrypt only ever uses the first 72 bytes.  The bcrypt package refuses longer
# input instead of truncating, but the hashes we verify were made by
# implementations (crypt_blowfish, OpenBSD) that truncate, so we do the same.
BCRYPT_MAX_PASSWORD_BYTES: Final = 72

# From Drepper's SHA-crypt specification.
SHA_CRYPT_DEFAULT_ROUNDS: Final = 5000
SHA_CRYPT_MIN_ROUNDS: Final = 1000
SHA_CRYPT_MAX_ROUNDS: Final = 999_999_999
SHA_CRYPT_MAX_SALT_BYTES: Final = 16
# A rounds value this long is clamped anyway; the bound only stops us from
# parsing an absurdly long number.
_SHA_CRYPT_MAX_ROUNDS_DIGITS: Final = 20

_HASHER: Final = argon2.PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_COST_KIB,
    parallelism=ARGON2_PARALLELISM,
    hash_len=ARGON2_HASH_LEN,
    salt_len=ARGON2_SALT_LEN,
    type=argon2.Type.ID,
)

# Only names like this are echoed in error messages; anything else might be a
# mangled hash (e.g. a missing "}"), which must never reach a log.
_PRINTABLE_SCHEME_RE: Final = re.compile(r"[A-Z0-9._-]{1,32}")


class UnsupportedHash(ValueError):
    """A stored hash uses an unknown scheme or is malformed.

    The message names the scheme but never contains the hash or a password.
    """


def _encode(password: str) -> bytes:
    return password.encode("utf-8", "surrogateescape")


def hash_password(password: str) -> str:
    """Hashes a password for storage.

    Args:
        password: The new password.

    Returns:
        An Argon2id hash in Dovecot's notation,
        ``{ARGON2ID}$argon2id$v=19$m=...,t=...,p=...$salt$hash``.

    Raises:
        ValueError: The password is longer than :data:`MAX_PASSWORD_BYTES`
            once encoded (it could never be verified), or contains a
            surrogate that ``surrogateescape`` cannot encode.
    """
    secret = _encode(password)
    if len(secret) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password is longer than {MAX_PASSWORD_BYTES} bytes")
    return "{ARGON2ID}" + _HASHER.hash(secret)


def is_instant(stored: str) -> bool:
    """True for a scheme that takes no work to verify (PLAIN, CLEARTEXT): the others
    are slow on purpose, and are verified in a pool thread."""
    try:
        return _split_scheme(stored)[0] in ("PLAIN", "CLEARTEXT")
    except UnsupportedHash:
        return False


def verify_password(stored: str, password: str) -> bool:
    """Checks a password against a stored hash.

    Args:
        stored: ``{SCHEME}hash`` as found in the password file.  The scheme
            name is case-insensitive; without a ``{...}`` prefix the value is
            taken to be ``CRYPT``.  Supported: ARGON2ID, ARGON2I, BLF-CRYPT,
            BCRYPT, SHA512-CRYPT, SHA256-CRYPT, PLAIN, CLEARTEXT and CRYPT
            (with a ``$6$``, ``$5$``, ``$2a$``, ``$2b$``, ``$2y$``,
            ``$argon2id$`` or ``$argon2i$`` hash).
        password: The password the client sent.

    Returns:
        Whether the password matches.  A password longer than
        :data:`MAX_PASSWORD_BYTES` never matches (and the hash is then not
        examined beyond its scheme).

    Raises:
        UnsupportedHash: The scheme is unknown or the hash is malformed.
    """
    scheme, body = _split_scheme(stored)
    verifier = _VERIFIERS.get(scheme)
    if verifier is None:
        raise UnsupportedHash(f"unsupported password scheme {_show_scheme(scheme)}")
    try:
        secret = _encode(password)
    except UnicodeEncodeError:
        # A lone surrogate the caller's decoder could not have produced: no
        # stored hash can match it.
        return False
    if len(secret) > MAX_PASSWORD_BYTES:
        return False
    return verifier(body, secret)


def needs_rehash(stored: str) -> bool:
    """Tells whether a hash is older or weaker than what :func:`hash_password` makes now.

    Args:
        stored: ``{SCHEME}hash`` as found in the password file.

    Returns:
        False only for an ``{ARGON2ID}`` hash made with the current
        parameters; True for everything else, including malformed values.
    """
    try:
        scheme, body = _split_scheme(stored)
    except UnsupportedHash:
        return True
    if scheme != "ARGON2ID" or not body.startswith("$argon2id$"):
        return True
    try:
        return _HASHER.check_needs_rehash(body)
    except ValueError:  # includes argon2's InvalidHashError
        return True


@functools.cache
def dummy_hash() -> str:
    """Returns an Argon2id hash of a random password, made once per process.

    Verifying against it costs the same time as verifying a real account's
    current hash, so that an unknown user name cannot be told apart from a
    wrong password by timing.  The first call is slow; call it at start-up to
    move that cost out of the first login.
    """
    return hash_password(secrets.token_urlsafe(32))


def __getattr__(name: str) -> str:
    # DUMMY_HASH is computed on first access rather than at import, because
    # computing it takes tens of milliseconds and 19 MiB.
    if name == "DUMMY_HASH":
        return dummy_hash()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _split_scheme(stored: str) -> tuple[str, str]:
    if not stored.startswith("{"):
        return "CRYPT", stored
    end = stored.find("}")
    if end < 0:
        raise UnsupportedHash("malformed password scheme prefix: no closing '}'")
    scheme = stored[1:end]
    # ASCII only: str.upper() maps some non-ASCII letters onto ASCII ones.
    return (scheme.upper() if scheme.isascii() else scheme), stored[end + 1 :]


def _show_scheme(scheme: str) -> str:
    if _PRINTABLE_SCHEME_RE.fullmatch(scheme):
        return "{" + scheme + "}"
    return "(unprintable scheme name)"


def _malformed(scheme: str) -> UnsupportedHash:
    return UnsupportedHash(f"malformed {{{scheme}}} hash")


def _ascii(body: str, scheme: str) -> bytes:
    try:
        return body.encode("ascii")
    except UnicodeEncodeError:
        raise _malformed(scheme) from None


# --- Argon2 -----------------------------------------------------------------


def _verify_argon2(body: str, secret: bytes, *, prefix: str, scheme: str) -> bool:
    if not body.startswith(prefix):
        raise _malformed(scheme)
    encoded = _ascii(body, scheme)
    try:
        return _HASHER.verify(encoded, secret)
    except VerifyMismatchError:
        return False
    except (InvalidHashError, VerificationError):
        # Any other failure means the hash could not be decoded or used.
        raise _malformed(scheme) from None


# --- bcrypt -----------------------------------------------------------------

_BCRYPT_PREFIXES: Final = ("$2a$", "$2b$", "$2y$")


def _verify_bcrypt(body: str, secret: bytes, *, scheme: str) -> bool:
    if not body.startswith(_BCRYPT_PREFIXES):
        raise _malformed(scheme)
    encoded = _ascii(body, scheme)
    try:
        return bcrypt.checkpw(secret[:BCRYPT_MAX_PASSWORD_BYTES], encoded)
    except ValueError:
        raise _malformed(scheme) from None


# --- SHA-crypt (https://www.akkadia.org/drepper/SHA-crypt.txt) ---------------

_CRYPT_ALPHABET: Final = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class _ShaCryptVariant:
    ident: str
    digest: Callable[..., hashlib._Hash]
    checksum_len: int
    # The spec's byte order for the final encoding, in groups of up to three
    # bytes, most significant first; each group yields len(group)+1 chars.
    order: tuple[tuple[int, ...], ...]


_SHA256_CRYPT: Final = _ShaCryptVariant(
    ident="$5$",
    digest=hashlib.sha256,
    checksum_len=43,
    order=(
        (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14),
        (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29),
        (31, 30),
    ),
)  # fmt: skip

_SHA512_CRYPT: Final = _ShaCryptVariant(
    ident="$6$",
    digest=hashlib.sha512,
    checksum_len=86,
    order=(
        (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4),
        (47, 5, 26), (6, 27, 48), (28, 49, 7), (50, 8, 29), (9, 30, 51),
        (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13), (56, 14, 35),
        (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19),
        (62, 20, 41), (63,),
    ),
)  # fmt: skip

_SHA_CRYPT_BY_IDENT: Final = {v.ident: v for v in (_SHA256_CRYPT, _SHA512_CRYPT)}

_SETTING_ROUNDS_RE: Final = re.compile(
    rf"rounds=([0-9]{{1,{_SHA_CRYPT_MAX_ROUNDS_DIGITS}}})\$".encode()
)
# What follows "$5$" or "$6$" in a stored hash: [rounds=N$]salt$checksum.
_STORED_SHA_CRYPT_RE: Final = {
    v.ident: re.compile(
        rf"(?:rounds=([0-9]{{1,{_SHA_CRYPT_MAX_ROUNDS_DIGITS}}})\$)?"
        rf"([^$]*)\$([./0-9A-Za-z]{{{v.checksum_len}}})"
    )
    for v in (_SHA256_CRYPT, _SHA512_CRYPT)
}


def _clamp_sha_crypt_rounds(rounds: int) -> int:
    return min(max(rounds, SHA_CRYPT_MIN_ROUNDS), SHA_CRYPT_MAX_ROUNDS)


def _repeat_to(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def _sha_crypt_checksum(
    variant: _ShaCryptVariant, key: bytes, salt: bytes, rounds: int
) -> bytes:
    """Computes the encoded checksum part of a SHA-crypt hash (spec steps 1-22)."""
    h = variant.digest
    b = h(key + salt + key).digest()
    ctx = h(key + salt)
    ctx.update(_repeat_to(b, len(key)))
    n = len(key)
    while n:
        ctx.update(b if n & 1 else key)
        n >>= 1
    a = ctx.digest()

    # Hashing the key len(key) times is why MAX_PASSWORD_BYTES exists.
    dp_ctx = h()
    for _ in range(len(key)):
        dp_ctx.update(key)
    p = _repeat_to(dp_ctx.digest(), len(key))
    s = _repeat_to(h(salt * (16 + a[0])).digest(), len(salt))

    # Round r hashes (P or C) + (S if r % 3) + (P if r % 7) + (C or P), so the
    # constant parts depend only on r % 42: precompute them.
    affixes: list[tuple[bytes, bytes]] = []
    for r in range(42):
        middle = (s if r % 3 else b"") + (p if r % 7 else b"")
        affixes.append((p + middle, b"") if r & 1 else (b"", middle + p))
    c = a
    for r in range(rounds):
        before, after = affixes[r % 42]
        c = h(before + c + after).digest()

    out = bytearray()
    for group in variant.order:
        w = 0
        for index in group:
            w = (w << 8) | c[index]
        for _ in range(len(group) + 1):
            out.append(_CRYPT_ALPHABET[w & 0x3F])
            w >>= 6
    return bytes(out)


def sha_crypt(password: str, setting: str) -> str:
    """Computes a SHA-crypt hash the way glibc's ``crypt()`` does.

    Args:
        password: The password.
        setting: ``$5$`` or ``$6$``, an optional ``rounds=N$``, then the salt;
            anything after the salt's terminating ``$`` is ignored, so an
            existing hash is a valid setting.  As in the specification, the
            salt is truncated to 16 bytes and N clamped to 1000..999999999.

    Returns:
        The full hash, e.g. ``$6$rounds=10000$salt$checksum``.

    Raises:
        ValueError: The setting is not for SHA-256 or SHA-512 crypt.
    """
    variant = _SHA_CRYPT_BY_IDENT.get(setting[:3])
    if variant is None:
        raise ValueError("setting does not start with $5$ or $6$")
    rest = _encode(setting[3:])
    rounds = SHA_CRYPT_DEFAULT_ROUNDS
    rounds_prefix = b""
    # As in glibc, a "rounds=" that is not a number followed by "$" is salt.
    m = _SETTING_ROUNDS_RE.match(rest)
    if m:
        rounds = _clamp_sha_crypt_rounds(int(m[1]))
        rounds_prefix = b"rounds=%d$" % rounds
        rest = rest[m.end() :]
    salt = rest.split(b"$", 1)[0][:SHA_CRYPT_MAX_SALT_BYTES]
    checksum = _sha_crypt_checksum(variant, _encode(password), salt, rounds)
    result = variant.ident.encode() + rounds_prefix + salt + b"$" + checksum
    return result.decode("utf-8", "surrogateescape")


def _verify_sha_crypt(
    body: str, secret: bytes, *, variant: _ShaCryptVariant, scheme: str
) -> bool:
    # Stricter than sha_crypt(): a stored hash must be exactly what crypt()
    # would have produced, apart from an unclamped rounds value.
    if not body.startswith(variant.ident):
        raise _malformed(scheme)
    m = _STORED_SHA_CRYPT_RE[variant.ident].fullmatch(body, len(variant.ident))
    if m is None:
        raise _malformed(scheme)
    salt = _encode(m[2])
    if len(salt) > SHA_CRYPT_MAX_SALT_BYTES:
        raise _malformed(scheme)
    rounds = _clamp_sha_crypt_rounds(int(m[1])) if m[1] else SHA_CRYPT_DEFAULT_ROUNDS
    computed = _sha_crypt_checksum(variant, secret, salt, rounds)
    return hmac.compare_digest(computed, m[3].encode("ascii"))


# --- PLAIN and CRYPT --------------------------------------------------------


def _verify_plain(body: str, secret: bytes) -> bool:
    return hmac.compare_digest(_encode(body), secret)


def _verify_crypt(body: str, secret: bytes) -> bool:
    for prefix, verifier in _CRYPT_PREFIXES:
        if body.startswith(prefix):
            return verifier(body, secret)
    raise UnsupportedHash("unsupported {CRYPT} hash type")


_Verifier = Callable[[str, bytes], bool]

_CRYPT_PREFIXES: Final[tuple[tuple[str | tuple[str, ...], _Verifier], ...]] = (
    ("$6$", functools.partial(_verify_sha_crypt, variant=_SHA512_CRYPT, scheme="CRYPT")),
    ("$5$", functools.partial(_verify_sha_crypt, variant=_SHA256_CRYPT, scheme="CRYPT")),
    (_BCRYPT_PREFIXES, functools.partial(_verify_bcrypt, scheme="CRYPT")),
    ("$argon2id$", functools.partial(_verify_argon2, prefix="$argon2id$", scheme="CRYPT")),
    ("$argon2i$", functools.partial(_verify_argon2, prefix="$argon2i$", scheme="CRYPT")),
)

_VERIFIERS: Final[dict[str, _Verifier]] = {
    "ARGON2ID": functools.partial(_verify_argon2, prefix="$argon2id$", scheme="ARGON2ID"),
    "ARGON2I": functools.partial(_verify_argon2, prefix="$argon2i$", scheme="ARGON2I"),
    "BLF-CRYPT": functools.partial(_verify_bcrypt, scheme="BLF-CRYPT"),
    "BCRYPT": functools.partial(_verify_bcrypt, scheme="BCRYPT"),
    "SHA512-CRYPT": functools.partial(
        _verify_sha_crypt, variant=_SHA512_CRYPT, scheme="SHA512-CRYPT"
    ),
    "SHA256-CRYPT": functools.partial(
        _verify_sha_crypt, variant=_SHA256_CRYPT, scheme="SHA256-CRYPT"
    ),
    "PLAIN": _verify_plain,
    "CLEARTEXT": _verify_plain,
    "CRYPT": _verify_crypt,
}
