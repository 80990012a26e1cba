"""SASL mechanisms (RFC 5034): PLAIN, CRAM-MD5 and SCRAM-SHA-256 against RFC test vectors and bad input."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword, UsernamePassword
from zope.interface.verify import verifyObject

from vmspop.sasl import (
    MAX_STEP_OCTETS,
    MECHANISMS,
    Challenge,
    CramMD5,
    CramMD5Credentials,
    Done,
    ISharedSecretCredentials,
    Mechanism,
    Plain,
    SASLFailure,
    ScramCredentials,
    ScramSHA256,
    Step,
    make_mechanism,
    saslprep,
)

# RFC 7677 section 3.
RFC7677_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_NONCE = b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC7677_SALT = base64.b64decode(b"W22ZaJ0SNY7soEsUEjb6gQ==")
RFC7677_SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                        b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
RFC7677_CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC7677_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def challenge_of(step: Step) -> bytes:
    """The data of a step that must be a Challenge."""
    assert isinstance(step, Challenge), step
    return step.data


def credentials_of(step: Step) -> Any:
    """The credentials of a step that must be Done."""
    assert isinstance(step, Done), step
    return step.credentials


def rfc7677_scram() -> ScramSHA256:
    """A SCRAM exchange with RFC 7677's server nonce and salt."""
    return ScramSHA256(nonce_source=lambda n: RFC7677_SERVER_NONCE, salt=RFC7677_SALT)


def scram_at_final() -> ScramSHA256:
    """An RFC 7677 exchange waiting for the client-final message."""
    mech = rfc7677_scram()
    mech.start(RFC7677_CLIENT_FIRST)
    return mech


def client_final(password: bytes, client_first_bare: bytes, server_first: bytes,
                 gs2_header: bytes = b"n,,") -> bytes:
    """The client-final message a SCRAM-SHA-256 client computes (RFC 5802 section 3), done independently."""
    attrs = dict(item.split(b"=", 1) for item in server_first.split(b","))
    salted = hashlib.pbkdf2_hmac("sha256", password, base64.b64decode(attrs[b"s"]), int(attrs[b"i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    without_proof = b"c=" + base64.b64encode(gs2_header) + b",r=" + attrs[b"r"]
    auth_message = client_first_bare + b"," + server_first + b"," + without_proof
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return without_proof + b",p=" + base64.b64encode(proof)


def server_signature(password: bytes, auth_message: bytes, salt: bytes) -> bytes:
    """The ServerSignature a client expects (RFC 5802 section 3)."""
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, 4096)
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return hmac.new(server_key, auth_message, hashlib.sha256).digest()


def fails(mech: Mechanism, data: bytes | None, text: str, *, start: bool = False) -> None:
    """Assert that start() (or respond()) with ``data`` raises SASLFailure matching ``text``."""
    with pytest.raises(SASLFailure, match=text):
        mech.start(data) if start else mech.respond(data or b"")


# -- SCRAM-SHA-256 ---------------------------------------------------------------------------


def test_scram_rfc7677_example() -> None:
    """The RFC 7677 section 3 exchange is reproduced octet for octet."""
    mech = rfc7677_scram()
    assert mech.start(None) == Challenge(b"")
    assert mech.respond(RFC7677_CLIENT_FIRST) == Challenge(RFC7677_SERVER_FIRST)
    done = mech.respond(RFC7677_CLIENT_FINAL)
    assert isinstance(done, Done) and isinstance(done.credentials, ScramCredentials)
    assert done.credentials.username == b"user"
    assert done.credentials.checkPassword(b"pencil")
    assert mech.success() == RFC7677_SERVER_FINAL


def test_scram_rfc7677_initial_response() -> None:
    """The client-first message may come as the initial response of AUTH."""
    mech = rfc7677_scram()
    assert mech.start(RFC7677_CLIENT_FIRST) == Challenge(RFC7677_SERVER_FIRST)
    assert credentials_of(mech.respond(RFC7677_CLIENT_FINAL)).checkPassword(b"pencil")


def test_scram_real_exchange() -> None:
    """A full exchange with a random nonce and salt; the server signature is the one the client expects."""
    mech = ScramSHA256()
    bare = b"n=jones,r=fyko+d2lbbFgONRv9qkxdawL"
    server_first = mech.start(b"n,," + bare)
    assert isinstance(server_first, Challenge)
    nonce = dict(item.split(b"=", 1) for item in server_first.data.split(b","))[b"r"]
    assert nonce.startswith(b"fyko+d2lbbFgONRv9qkxdawL") and len(nonce) > 40
    final = client_final(b"tanstaafl", bare, server_first.data)
    done = mech.respond(final)
    assert isinstance(done, Done)
    creds = done.credentials
    assert isinstance(creds, ScramCredentials)
    assert creds.checkPassword(b"tanstaafl")
    auth_message = bare + b"," + server_first.data + b"," + final.rsplit(b",", 1)[0]
    expected = server_signature(b"tanstaafl", auth_message, creds.salt)
    assert mech.success() == b"v=" + base64.b64encode(expected)


def test_scram_wrong_password() -> None:
    """A wrong secret is refused and leaves no server signature to send."""
    mech = ScramSHA256()
    bare = b"n=jones,r=abcdefghijklmnop"
    server_first = challenge_of(mech.start(b"n,," + bare))
    creds = credentials_of(mech.respond(client_final(b"tanstaafl", bare, server_first)))
    assert not creds.checkPassword(b"tanstaafX")
    assert creds.server_signature is None
    with pytest.raises(SASLFailure):
        mech.success()


def test_scram_salt_and_nonce_differ_per_exchange() -> None:
    """Each exchange gets a fresh salt and server nonce, for known and unknown users alike."""
    first = [ScramSHA256().start(b"n,,n=jones,r=abc") for _ in range(2)]
    assert first[0] != first[1]


def test_scram_escaped_user_name_and_authzid() -> None:
    """=2C and =3D decode in the user name; an equal authzid is accepted and c= carries the whole header."""
    mech = ScramSHA256()
    header = b"n,a=a=2Cb=3Dc,"
    bare = b"n=a=2Cb=3Dc,r=nonce"
    server_first = challenge_of(mech.start(header + bare))
    creds = credentials_of(mech.respond(client_final(b"pw", bare, server_first, gs2_header=header)))
    assert creds.username == b"a,b=c" and creds.checkPassword(b"pw")


def test_scram_y_flag() -> None:
    """A client that could do channel binding but thinks we cannot ("y") sends c=eSws."""
    mech = ScramSHA256()
    bare = b"n=user,r=nonce"
    final = client_final(b"pw", bare, challenge_of(mech.start(b"y,," + bare)), gs2_header=b"y,,")
    assert final.startswith(b"c=eSws,")
    assert isinstance(mech.respond(final), Done)


def test_scram_ignores_unknown_extensions() -> None:
    """Well-formed optional extensions after the nonce are ignored."""
    assert isinstance(ScramSHA256().start(b"n,,n=user,r=nonce,x=whatever"), Challenge)


def test_scram_saslprep_of_secret() -> None:
    """The secret goes through SASLprep: a soft hyphen vanishes, so "pen\\u00adcil" proves "pencil"."""
    mech = scram_at_final()
    assert credentials_of(mech.respond(RFC7677_CLIENT_FINAL)).checkPassword("pen\u00adcil".encode())


def test_scram_secret_not_utf8_is_used_raw() -> None:
    """A secret that is not UTF-8 is used as raw octets rather than refused."""
    mech = ScramSHA256()
    bare = b"n=user,r=nonce"
    server_first = challenge_of(mech.start(b"n,," + bare))
    assert credentials_of(mech.respond(client_final(b"\xff\xfe", bare, server_first))).checkPassword(b"\xff\xfe")


@pytest.mark.parametrize("data, text", [
    (b"", "empty"),
    (b"n,,", "attribute"),
    (b"n,", "malformed"),
    (b"p=tls-unique,,n=user,r=abc", "channel binding not supported"),
    (b"x,,n=user,r=abc", "GS2 header"),
    (b"n,a=other,n=user,r=abc", "authorization identity not supported"),
    (b"n,b=user,n=user,r=abc", "expected SCRAM attribute a="),
    (b"n,,r=abc,n=user", "expected SCRAM attribute n="),
    (b"n,,n=user", "malformed"),
    (b"n,,n=user,x=abc", "expected SCRAM attribute r="),
    (b"n,,m=ext,n=user,r=abc", "mandatory SCRAM extensions"),
    (b"n,,n=user,r=abc,m=ext", "mandatory SCRAM extensions"),
    (b"n,,n=user,r=abc,junk", "malformed SCRAM attribute"),
    (b"n,,n=,r=abc", "user name"),
    (b"n,,n=us=3Xer,r=abc", "user name"),
    (b"n,,n=user=,r=abc", "user name"),
    (b"n,,n=\xff\xfe,r=abc", "not UTF-8"),
    (b"n,,n=user,r=", "nonce"),
    (b"n,,n=user,r=ab c", "nonce"),
])
def test_scram_bad_client_first(data: bytes, text: str) -> None:
    """A malformed or unacceptable client-first message is refused with a clear reason."""
    fails(ScramSHA256(), data, text, start=True)


@pytest.mark.parametrize("data, text", [
    (b"", "malformed"),
    (RFC7677_CLIENT_FINAL.replace(b"c=biws", b"c=eSws"), "channel binding data does not match"),
    (RFC7677_CLIENT_FINAL.replace(b"c=biws", b"c=bi*s"), "malformed SCRAM channel binding"),
    (RFC7677_CLIENT_FINAL.replace(b"c=biws", b"c=biw"), "malformed SCRAM channel binding"),
    (RFC7677_CLIENT_FINAL.replace(b"$k0", b"$k1"), "nonce mismatch"),
    (RFC7677_CLIENT_FINAL.replace(b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", b""), "nonce mismatch"),
    (RFC7677_CLIENT_FINAL.replace(b"p=dHzb", b"p=dH!b"), "malformed SCRAM client proof"),
    (RFC7677_CLIENT_FINAL.replace(b"p=dHzb", b"p=dHz"), "malformed SCRAM client proof"),
    (RFC7677_CLIENT_FINAL[:-8] + b"=", "malformed SCRAM client proof"),
    (b"c=biws,r=x,p=" + base64.b64encode(b"short"), "nonce mismatch"),
    (RFC7677_CLIENT_FINAL + b",x=1", "expected SCRAM attribute p="),
    (b"r=abc,c=biws,p=AAAA", "expected SCRAM attribute c="),
    (b"c=biws,p=AAAA,r=abc", "expected SCRAM attribute r="),
    (b"c=biws,r=abc", "malformed"),
    (RFC7677_CLIENT_FINAL.replace(b",p=", b",m=x,p="), "mandatory SCRAM extensions"),
])
def test_scram_bad_client_final(data: bytes, text: str) -> None:
    """A malformed or mismatching client-final message is refused with a clear reason."""
    fails(scram_at_final(), data, text)


def test_scram_short_proof_is_refused() -> None:
    """A proof of the wrong length is refused even when everything else matches."""
    data = RFC7677_CLIENT_FINAL.rsplit(b"p=", 1)[0] + b"p=" + base64.b64encode(b"short")
    fails(scram_at_final(), data, "malformed SCRAM client proof")


def test_scram_success_before_done() -> None:
    """There is no server signature to send before the exchange was completed and checked."""
    with pytest.raises(SASLFailure, match="not complete"):
        scram_at_final().success()


def test_scram_iterations_minimum() -> None:
    """Fewer iterations than RFC 7677's minimum of 4096 are a configuration error."""
    with pytest.raises(ValueError):
        ScramSHA256(iterations=4095)
    assert b"i=10000" in challenge_of(ScramSHA256(iterations=10000).start(b"n,,n=u,r=x"))


# -- CRAM-MD5 --------------------------------------------------------------------------------


RFC2195_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"


def test_cram_md5_rfc2195_example() -> None:
    """The RFC 2195 example: tim's response proves the secret tanstaaftanstaaf."""
    mech = CramMD5(hostname="unused", challenge=RFC2195_CHALLENGE)
    assert mech.start(None) == Challenge(RFC2195_CHALLENGE)
    done = mech.respond(b"tim b913a602c7eda7a495b4e6e7334d3890")
    assert isinstance(done, Done) and isinstance(done.credentials, CramMD5Credentials)
    assert done.credentials.username == b"tim"
    assert done.credentials.challenge == RFC2195_CHALLENGE
    assert done.credentials.checkPassword(b"tanstaaftanstaaf")
    assert not done.credentials.checkPassword(b"tanstaaftanstaafX")
    assert mech.success() is None


def test_cram_md5_upper_case_digest() -> None:
    """Upper-case hex digits are accepted and lower-cased."""
    mech = CramMD5(hostname="x", challenge=RFC2195_CHALLENGE)
    mech.start(None)
    creds = credentials_of(mech.respond(b"tim B913A602C7EDA7A495B4E6E7334D3890"))
    assert creds.response == b"b913a602c7eda7a495b4e6e7334d3890" and creds.checkPassword(b"tanstaaftanstaaf")


def test_cram_md5_challenge_shape() -> None:
    """The generated challenge is <random.timestamp@hostname> and differs every time."""
    first = CramMD5(hostname="pop.example.com", clock=lambda: 1234.5).start(None)
    second = CramMD5(hostname="pop.example.com", clock=lambda: 1234.5).start(None)
    assert isinstance(first, Challenge) and first != second
    assert first.data.startswith(b"<") and first.data.endswith(b".1234@pop.example.com>")
    assert first.data[1:-1].split(b".", 1)[0].isdigit()


@pytest.mark.parametrize("initial", [b"", b"tim b913a602c7eda7a495b4e6e7334d3890"])
def test_cram_md5_refuses_initial_response(initial: bytes) -> None:
    """CRAM-MD5 has no initial response, not even an empty one."""
    fails(CramMD5(hostname="x"), initial, "initial response", start=True)


@pytest.mark.parametrize("data", [
    b"", b"tim", b"b913a602c7eda7a495b4e6e7334d3890", b" b913a602c7eda7a495b4e6e7334d3890",
    b"tim b913a602c7eda7a495b4e6e7334d389", b"tim b913a602c7eda7a495b4e6e7334d38900",
    b"tim g913a602c7eda7a495b4e6e7334d3890", b"\xfftim b913a602c7eda7a495b4e6e7334d3890",
])
def test_cram_md5_bad_response(data: bytes) -> None:
    """A response that is not "user SP 32-hex-digits" is refused."""
    mech = CramMD5(hostname="x")
    mech.start(None)
    with pytest.raises(SASLFailure):
        mech.respond(data)


# -- PLAIN -----------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"\0jones\0wonderland", b"jones\0jones\0wonderland"])
def test_plain(data: bytes) -> None:
    """PLAIN without an authzid, or with one equal to the authcid, gives UsernamePassword."""
    done = Plain().start(data)
    assert isinstance(done, Done) and isinstance(done.credentials, UsernamePassword)
    assert (done.credentials.username, done.credentials.password) == (b"jones", b"wonderland")


def test_plain_without_initial_response() -> None:
    """Without an initial response, PLAIN sends an empty challenge and takes the message next."""
    mech = Plain()
    assert mech.start(None) == Challenge(b"")
    assert credentials_of(mech.respond(b"\0jones\0pass word")).password == b"pass word"
    assert mech.success() is None


@pytest.mark.parametrize("data, text", [
    (b"admin\0jones\0wonderland", "authorization identity not supported"),
    (b"jones\0wonderland", "malformed"),
    (b"jones", "malformed"),
    (b"", "malformed"),
    (b"\0jones\0pass\0word", "malformed"),
    (b"\0jones\0", "empty password"),
    (b"\0\0wonderland", "user name"),
    (b"\0\xffjones\0wonderland", "not UTF-8"),
])
def test_plain_bad(data: bytes, text: str) -> None:
    """Bad PLAIN messages are refused with a clear reason."""
    fails(Plain(), data, text, start=True)


def test_plain_failure_text_has_no_secret() -> None:
    """Failure texts never echo what the client sent."""
    with pytest.raises(SASLFailure) as info:
        Plain().start(b"x\0jones\0sekrit")
    assert "sekrit" not in str(info.value) and "jones" not in str(info.value)


# -- common ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MECHANISMS)
def test_responses_after_done_are_refused(name: bytes) -> None:
    """Once an exchange is over (done or failed), every further step is refused."""
    mech = make_mechanism(name, hostname="x")
    with pytest.raises(SASLFailure):
        mech.start(b"\0")  # malformed or refused for every mechanism
    fails(mech, b"\0a\0b", "already ended")
    fails(mech, None, "already started", start=True)
    done = Plain()
    done.start(b"\0jones\0pw")
    fails(done, b"\0jones\0pw", "already ended")


def test_respond_before_start() -> None:
    """respond() before start() is refused."""
    fails(ScramSHA256(), b"n,,n=u,r=x", "not started")


@pytest.mark.parametrize("name", MECHANISMS)
def test_oversized_steps(name: bytes) -> None:
    """A step longer than MAX_STEP_OCTETS is refused, as an initial response or a response."""
    big = b"\0user\0" + b"x" * MAX_STEP_OCTETS
    fails(make_mechanism(name, hostname="x"), big, "too long", start=True)
    mech = make_mechanism(name, hostname="x")
    mech.start(None)
    fails(mech, big, "too long")


def test_plain_accepts_255_octet_fields() -> None:
    """RFC 4616's 255 octets per field fit under the step limit."""
    done = Plain().start(b"u" * 255 + b"\0" + b"u" * 255 + b"\0" + b"p" * 255)
    assert isinstance(done, Done)


@pytest.mark.parametrize("name, cls", [
    (b"scram-sha-256", ScramSHA256), (b"Cram-Md5", CramMD5), (b"plain", Plain), (b"PLAIN", Plain),
])
def test_make_mechanism(name: bytes, cls: type) -> None:
    """Mechanism names are case-insensitive; each call makes a fresh exchange."""
    mech = make_mechanism(name, hostname="pop.example.com")
    assert isinstance(mech, cls) and mech.name == name.upper()
    assert make_mechanism(name, hostname="pop.example.com") is not mech


@pytest.mark.parametrize("name", [b"LOGIN", b"SCRAM-SHA-1", b"SCRAM-SHA-256-PLUS", b"", b"\xff"])
def test_make_mechanism_unknown(name: bytes) -> None:
    """Unknown mechanisms are refused with a fixed text."""
    with pytest.raises(SASLFailure, match="^unknown SASL mechanism$"):
        make_mechanism(name, hostname="x")


def test_mechanisms_in_preference_order() -> None:
    """MECHANISMS lists the strongest first."""
    assert MECHANISMS == (b"SCRAM-SHA-256", b"CRAM-MD5", b"PLAIN")


def test_credentials_provide_interfaces() -> None:
    """The shared-secret credentials provide their interfaces; PLAIN gives IUsernamePassword."""
    for creds in (CramMD5Credentials(b"tim", b"<1@x>", b"0" * 32),
                  ScramCredentials(b"user", b"salt", 4096, b"msg", b"\0" * 32)):
        assert verifyObject(ISharedSecretCredentials, creds)
        assert IUsernameHashedPassword.providedBy(creds)
    assert IUsernamePassword.providedBy(credentials_of(Plain().start(b"\0a\0b")))


def test_saslprep() -> None:
    """SASLprep maps, normalizes and prohibits as RFC 4013 section 3's examples show."""
    assert saslprep("I\u00adX") == "IX"
    assert saslprep("user") == "user"
    assert saslprep("USER") == "USER"
    assert saslprep("\u00aa") == "a"
    assert saslprep("\u2168") == "IX"
    assert saslprep("a\u00a0b") == "a b"
    for bad in ("\u0007", "a\u0627", "\u06271", "a\ud800"):
        with pytest.raises(ValueError):
            saslprep(bad)
    assert saslprep("\u0627\u0628") == "\u0627\u0628"
    with pytest.raises(ValueError):
        saslprep("\u0221")  # unassigned in Unicode 3.2: prohibited in a stored string (RFC 5802)
    assert saslprep("\u0221", allow_unassigned=True) == "\u0221"


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(MECHANISMS), steps=st.lists(st.binary(max_size=80), min_size=1, max_size=4))
def test_arbitrary_input_only_raises_saslfailure(name: bytes, steps: list[bytes]) -> None:
    """Whatever the client sends, a mechanism answers with a step or SASLFailure, nothing else."""
    mech = make_mechanism(name, hostname="x")
    try:
        mech.start(None)
        for data in steps:
            mech.respond(data)
    except SASLFailure:
        pass


@settings(max_examples=200, deadline=None)
@given(user=st.binary(min_size=1, max_size=20), nonce=st.binary(min_size=1, max_size=20),
       extra=st.binary(max_size=40))
def test_arbitrary_scram_fields_only_raise_saslfailure(user: bytes, nonce: bytes, extra: bytes) -> None:
    """Structured but hostile SCRAM fields never raise anything but SASLFailure."""
    mech = ScramSHA256()
    try:
        mech.start(b"n,,n=" + user + b",r=" + nonce)
        mech.respond(b"c=biws,r=" + nonce + extra + b",p=" + extra)
    except SASLFailure:
        pass
