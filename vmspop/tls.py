"""The server's TLS certificate for STLS, reloaded when the files on disk change.

Certificates are renewed on disk (certbot, an ACME client, an operator); the next
STLS after the change uses the new files, with no restart.  A replacement that
cannot be loaded (half-written, key not matching) is reported and the previous
certificate stays in use, so a bad renewal never takes TLS down.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from OpenSSL import crypto
from twisted.internet.ssl import CertificateOptions, TLSVersion

__all__ = ["TLSCertificate", "TLSError"]

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class TLSError(Exception):
    """The certificate or key cannot be used; the message says why (never key material)."""


def _load(cert_path: Path, key_path: Path) -> CertificateOptions:
    try:
        cert_pem = cert_path.read_bytes()
        key_pem = key_path.read_bytes()
    except OSError as e:
        raise TLSError(f"{e.filename}: {e.strerror}") from None
    blocks = _PEM_CERT.findall(cert_pem)
    if not blocks:
        raise TLSError(f"{cert_path}: no PEM certificate in it")
    try:
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error:
        raise TLSError(f"{cert_path} or {key_path}: not a valid PEM certificate or key") from None
    options = CertificateOptions(privateKey=key, certificate=chain[0], extraCertChain=chain[1:],
                                 raiseMinimumTo=TLSVersion.TLSv1_2)  # RFC 8314 section 4.1
    try:
        options.getContext()  # checks that the key matches the certificate
    except Exception:
        raise TLSError(f"{key_path} does not match the certificate in {cert_path}") from None
    return options


class TLSCertificate:
    """The certificate and key files given by ``--tls-cert`` and ``--tls-key``.

    Args:
        cert_path: PEM certificate, optionally followed by its chain.
        key_path: PEM private key.
        on_error: called with a message when a changed pair cannot be loaded.

    Raises:
        TLSError: the files cannot be used at start-up.
    """

    def __init__(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str],
                 on_error: Callable[[str], None] | None = None) -> None:
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)
        self._on_error = on_error or (lambda message: None)
        self._stamp = self._current_stamp()
        self._options = _load(self.cert_path, self.key_path)

    def _current_stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in (self.cert_path, self.key_path):
            try:
                st = path.stat()
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append((0, 0, 0))
        return tuple(stamps)

    def options(self) -> CertificateOptions:
        """The context factory for a new TLS session, reloading changed files first."""
        stamp = self._current_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._options = _load(self.cert_path, self.key_path)
            except TLSError as e:
                self._on_error(f"new TLS certificate not loaded, keeping the previous one: {e}")
        return self._options
