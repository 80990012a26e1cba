"""Tests for vmspop.hashing."""

from __future__ import annotations

import argon2
import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmspop import hashing
from vmspop.hashing import (
    MAX_PASSWORD_BYTES,
    UnsupportedHash,
    dummy_hash,
    hash_password,
    needs_rehash,
    sha_crypt,
    verify_password,
)

PASSWORD = "correct horse battery staple"
WRONG = "correct horse battery stapler"


def _bytes_password(raw: bytes) -> str:
    """Decodes a password the way the protocol layer does."""
    return raw.decode("utf-8", "surrogateescape")


# (setting, password, expected) from Drepper's SHA-crypt specification,
# https://www.akkadia.org/drepper/SHA-crypt.txt, plus musl's tests with
# non-UTF-8 passwords, an empty salt and rounds below the minimum.
SHA_CRYPT_VECTORS = [
    (
        "$5$saltstring",
        "Hello world!",
        "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
    ),
    (
        "$5$rounds=10000$saltstringsaltstring",
        "Hello world!",
        "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA",
    ),
    (
        "$5$rounds=5000$toolongsaltstring",
        "This is just a test",
        "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5",
    ),
    (
        "$5$rounds=1400$anotherlongsaltstring",
        "a very much longer text to encrypt.  This one even stretches over morethan one line.",
        "$5$rounds=1400$anotherlongsalts$Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP84Bnq1",
    ),
    (
        "$5$rounds=77777$short",
        "we have a short salt string but not a short password",
        "$5$rounds=77777$short$JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/",
    ),
    (
        "$5$rounds=10$roundstoolow",
        "the minimum number is still observed",
        "$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC",
    ),
    (
        "$6$saltstring",
        "Hello world!",
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiB"
        "FdcbYEdFCoEOfaS35inz1",
    ),
    (
        "$6$rounds=10000$saltstringsaltstring",
        "Hello world!",
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/U"
        "rjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
    ),
    (
        "$6$rounds=5000$toolongsaltstring",
        "This is just a test",
        "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7o"
        "GDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0",
    ),
    (
        "$6$rounds=1400$anotherlongsaltstring",
        "a very much longer text to encrypt.  This one even stretches over morethan one line.",
        "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoY"
        "N3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1",
    ),
    (
        "$6$rounds=77777$short",
        "we have a short salt string but not a short password",
        "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5C"
        "CaUeOxFmtlcGZelFl5CxtgfiAc0",
    ),
    (
        "$6$rounds=10$roundstoolow",
        "the minimum number is still observed",
        "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZ"
        "t58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.",
    ),
    (
        "$6$$",
        "",
        "$6$$/chiBau24cE26QQVW3IfIe68Xu5.JQ4E8Ie7lcRLwqxO5cxGuBhqF2HmTL.zWJ9zjChg3yJYFXeG"
        "BQ2y3Ba1d1",
    ),
    (
        "$6$rounds=1234$abc0123456789$",
        _bytes_password(b"Xy01@#\x01\x02\x80\x7f\xff\r\n\x81\t !"),
        "$6$rounds=1234$abc0123456789$BCpt8zLrc/RcyuXmCDOE1ALqMXB2MH6n1g891HhFj8.w7LxGv.F"
        "Tkqq6Vxc/km3Y0jE0j24jY5PIv/oOu6reg1",
    ),
    (
        "$5$salt1234$",
        _bytes_password(b"Aa@\xaa 0123456789"),
        "$5$salt1234$1145V3OxW91Wl.LSS3pmBHvb2jV3ujiUhD7DgpoJtw9",
    ),
    (
        "$5$rounds=00001234$",
        "a",
        "$5$rounds=1234$$i.IiuqtWmTzupHAZtfV/PB33Usz.MwGHq9BKFAEj.B3",
    ),
]


def _argon2i(password: str) -> str:
    """Makes an Argon2i hash (cheap parameters: only the scheme matters here)."""
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=1024, type=argon2.Type.I)
    return hasher.hash(password)


def _bcrypt(password: str, ident: str) -> str:
    """Makes a bcrypt hash with the given $2?$ identifier and the minimum cost."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return ident + hashed[4:]


def _stored_hashes(password: str) -> list[str]:
    """Returns the password hashed in every supported scheme and notation."""
    sha512 = sha_crypt(password, "$6$rounds=1000$somesalt")
    sha256 = sha_crypt(password, "$5$somesalt")
    argon2id = hash_password(password)
    argon2i = _argon2i(password)
    bcrypt_2b = _bcrypt(password, "$2b$")
    return [
        argon2id,
        "{argon2id}" + argon2id.removeprefix("{ARGON2ID}"),
        "{ARGON2I}" + argon2i,
        "{BLF-CRYPT}" + _bcrypt(password, "$2y$"),
        "{BCRYPT}" + _bcrypt(password, "$2a$"),
        "{blf-crypt}" + bcrypt_2b,
        "{SHA512-CRYPT}" + sha512,
        "{SHA256-CRYPT}" + sha256,
        "{sha512-crypt}" + sha_crypt(password, "$6$anothersalt"),
        "{PLAIN}" + password,
        "{CLEARTEXT}" + password,
        "{Plain}" + password,
        "{CRYPT}" + sha512,
        "{CRYPT}" + sha256,
        "{CRYPT}" + bcrypt_2b,
        "{CRYPT}" + argon2id.removeprefix("{ARGON2ID}"),
        "{CRYPT}" + argon2i,
        sha512,
        sha256,
        bcrypt_2b,
        argon2i,
    ]


@pytest.fixture(scope="module")
def stored_hashes() -> list[str]:
    """Every scheme's hash of PASSWORD, computed once per module."""
    return _stored_hashes(PASSWORD)


def test_every_scheme_verifies_right_password(stored_hashes: list[str]) -> None:
    """Each supported scheme and notation accepts the right password."""
    for stored in stored_hashes:
        assert verify_password(stored, PASSWORD) is True, stored


def test_every_scheme_rejects_wrong_password(stored_hashes: list[str]) -> None:
    """Each supported scheme and notation rejects a wrong password with False."""
    for stored in stored_hashes:
        assert verify_password(stored, WRONG) is False, stored
        assert verify_password(stored, "") is False, stored


@pytest.mark.parametrize("password", ["with some spaces ", "pässwörd ✓ 密码", "\t tab", ""])
def test_unusual_passwords_round_trip(password: str) -> None:
    """Spaces, non-ASCII and empty passwords verify in all schemes."""
    for stored in _stored_hashes(password):
        assert verify_password(stored, password) is True, stored
        assert verify_password(stored, password + "x") is False, stored


def test_non_utf8_password_bytes_are_hashed_exactly() -> None:
    """A password that is not UTF-8 keeps its exact bytes, distinct from U+FFFD."""
    raw = _bytes_password(b"caf\xe9 \xff")
    stored = hash_password(raw)
    assert verify_password(stored, raw)
    assert not verify_password(stored, b"caf\xe9 \xff".decode("utf-8", "replace"))
    assert not verify_password(stored, "café \xff")


@pytest.mark.parametrize(("setting", "password", "expected"), SHA_CRYPT_VECTORS)
def test_sha_crypt_matches_published_vectors(setting: str, password: str, expected: str) -> None:
    """sha_crypt() reproduces the specification's (and musl's) test vectors."""
    assert sha_crypt(password, setting) == expected
    # An existing hash is a valid setting, as with crypt().
    assert sha_crypt(password, expected) == expected


@pytest.mark.parametrize(("setting", "password", "expected"), SHA_CRYPT_VECTORS)
def test_verify_sha_crypt_published_vectors(setting: str, password: str, expected: str) -> None:
    """The published SHA-crypt hashes verify in every notation."""
    scheme = "SHA512-CRYPT" if expected.startswith("$6$") else "SHA256-CRYPT"
    for stored in (expected, "{CRYPT}" + expected, "{" + scheme + "}" + expected):
        assert verify_password(stored, password)
        assert not verify_password(stored, password + "!")


def test_sha_crypt_accepts_unclamped_rounds_in_stored_hash() -> None:
    """A stored rounds=10 hash verifies as the 1000 rounds actually used."""
    stored = "$5$rounds=10$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC"
    assert verify_password(stored, "the minimum number is still observed")


def test_sha_crypt_rounds_are_clamped() -> None:
    """Rounds are clamped to the specification's 1000..999999999."""
    assert hashing._clamp_sha_crypt_rounds(0) == 1000
    assert hashing._clamp_sha_crypt_rounds(5000) == 5000
    assert hashing._clamp_sha_crypt_rounds(10**15) == 999_999_999


def test_sha_crypt_rejects_other_settings() -> None:
    """sha_crypt() only computes $5$ and $6$ hashes."""
    with pytest.raises(ValueError):
        sha_crypt("x", "$1$salt$")


def test_hash_password_uses_argon2id_with_current_parameters() -> None:
    """New hashes are Argon2id in Dovecot notation with the OWASP parameters."""
    stored = hash_password(PASSWORD)
    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password(stored, PASSWORD)
    assert hash_password(PASSWORD) != stored  # freshly salted


def test_hash_password_refuses_overlong_password() -> None:
    """A password too long to ever verify cannot be set."""
    with pytest.raises(ValueError, match="longer than"):
        hash_password("x" * (MAX_PASSWORD_BYTES + 1))


def test_overlong_password_never_verifies() -> None:
    """A password over MAX_PASSWORD_BYTES is rejected without hashing it."""
    long_password = "x" * (MAX_PASSWORD_BYTES + 1)
    assert not verify_password("{PLAIN}" + long_password, long_password)
    assert verify_password("{PLAIN}" + long_password[:-1], long_password[:-1])


def test_bcrypt_truncates_like_crypt_blowfish() -> None:
    """Passwords over 72 bytes compare on their first 72 bytes, as in crypt_blowfish."""
    long_password = "p" * 72 + "ignored"
    stored = "{BLF-CRYPT}" + _bcrypt("p" * 72, "$2y$")
    assert verify_password(stored, long_password)
    assert not verify_password(stored, "p" * 71)


def test_unknown_scheme_raises_without_revealing_hash() -> None:
    """An unknown scheme raises UnsupportedHash naming the scheme, not the hash."""
    with pytest.raises(UnsupportedHash) as info:
        verify_password("{MD5-CRYPT}$1$saltsalt$SeCrEtHaShVaLuE", PASSWORD)
    message = str(info.value)
    assert "MD5-CRYPT" in message
    assert "SeCrEtHaShVaLuE" not in message and "saltsalt" not in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "stored",
    [
        "{SHA512-CRYPT}$6$salt$SeCrEtHaShVaLuEtooshort",
        "{SHA512-CRYPT}$5$salt$3c2QQ0KjIU1OLtB29cl8Fplc2WN7X89bnoEjaR7tWu.",
        "{SHA256-CRYPT}$5$SeCrEtHaShVaLuE17$3c2QQ0KjIU1OLtB29cl8Fplc2WN7X89bnoEjaR7tWu.",
        "{SHA256-CRYPT}$5$rounds=x$salt$3c2QQ0KjIU1OLtB29cl8Fplc2WN7X89bnoEjaR7tWu.",
        "{BLF-CRYPT}$2x$04$SeCrEtHaShVaLuE",
        "{BLF-CRYPT}$2b$04$SeCrEtHaShVaLuE",
        "{BCRYPT}$2b$04$SeCrEtHaShVaLuEé",
        "{ARGON2ID}$argon2id$SeCrEtHaShVaLuE",
        "{ARGON2ID}$argon2i$v=19$m=1024,t=1,p=1$SeCrEtHaShVaLuE$SeCrEtHaShVaLuE",
        "{ARGON2I}$argon2id$v=19$m=1024,t=1,p=1$SeCrEtHaShVaLuE$SeCrEtHaShVaLuE",
        "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$",
        "{CRYPT}$1$saltsalt$SeCrEtHaShVaLuE",
        "{CRYPT}$y$j9T$SeCrEtHaShVaLuE",
        "abSeCrEtHaShVaLuE",  # DES crypt, no prefix
        "",
        "{SeCrEtHaShVaLuE",
        "{SeCrEt HaShVaLuE}x",
        "{\u017fha512-crypt}$6$saltstring$SeCrEtHaShVaLuE",  # LONG S upper-cases to S
    ],
)
def test_malformed_hash_raises_without_revealing_it(stored: str) -> None:
    """Malformed or unsupported hashes raise UnsupportedHash; the message omits the hash."""
    with pytest.raises(UnsupportedHash) as info:
        verify_password(stored, PASSWORD)
    assert "SeCrEt" not in str(info.value)
    assert PASSWORD not in str(info.value)


def test_no_prefix_is_crypt() -> None:
    """A value without {SCHEME} is dispatched on its $id$ like {CRYPT}."""
    sha512 = sha_crypt(PASSWORD, "$6$nosalt")
    assert verify_password(sha512, PASSWORD)
    assert not verify_password(sha512, WRONG)
    with pytest.raises(UnsupportedHash, match="CRYPT"):
        verify_password("$1$saltsalt$abcdefghijklmnopqrstuv", PASSWORD)


def test_needs_rehash() -> None:
    """Only {ARGON2ID} with the current parameters needs no rehash."""
    current = hash_password(PASSWORD)
    assert needs_rehash(current) is False
    assert needs_rehash("{argon2id}" + current.removeprefix("{ARGON2ID}")) is False
    weaker = argon2.PasswordHasher(time_cost=1, memory_cost=1024).hash(PASSWORD)
    for stored in [
        "{ARGON2ID}" + weaker,
        "{CRYPT}" + current.removeprefix("{ARGON2ID}"),
        current.removeprefix("{ARGON2ID}"),
        "{ARGON2I}" + _argon2i(PASSWORD),
        "{BLF-CRYPT}" + _bcrypt(PASSWORD, "$2y$"),
        "{SHA512-CRYPT}" + sha_crypt(PASSWORD, "$6$salt"),
        "{PLAIN}" + PASSWORD,
        "{ARGON2ID}$argon2id$garbage",
        "{NOSUCH}x",
        "{unterminated",
    ]:
        assert needs_rehash(stored) is True, stored


def test_dummy_hash_is_cached_current_argon2id() -> None:
    """dummy_hash() is computed once, is current Argon2id, and matches no password."""
    first = dummy_hash()
    assert dummy_hash() is first
    assert hashing.DUMMY_HASH is first
    assert not needs_rehash(first)
    assert verify_password(first, "") is False
    assert verify_password(first, PASSWORD) is False


def test_module_getattr_rejects_other_names() -> None:
    """The lazy module attribute hook only provides DUMMY_HASH."""
    with pytest.raises(AttributeError):
        hashing.NO_SUCH_THING  # noqa: B018


@settings(max_examples=50, deadline=None)
@given(password=st.text(max_size=40), other=st.text(max_size=40))
def test_plain_compares_exactly(password: str, other: str) -> None:
    """PLAIN accepts exactly the stored text, including arbitrary Unicode."""
    try:
        password.encode("utf-8", "surrogateescape")
        other.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Surrogates that the protocol's decoder could never produce.
        assert verify_password("{PLAIN}x", password + other) is False
        return
    assert verify_password("{PLAIN}" + password, password)
    assert verify_password("{PLAIN}" + password, other) == (password == other)


@settings(max_examples=25, deadline=None)
@given(
    password=st.binary(max_size=40),
    salt=st.text(alphabet="./0123456789abcdefXYZ", max_size=16),
)
def test_sha_crypt_round_trips(password: bytes, salt: str) -> None:
    """Whatever sha_crypt() produces verifies, for arbitrary password bytes."""
    text = _bytes_password(password)
    stored = sha_crypt(text, "$6$rounds=1000$" + salt)
    assert verify_password(stored, text)
    assert not verify_password(stored, text + "x")
