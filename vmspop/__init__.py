"""vmspop: the OpenVMS TCP/IP Services POP3 server, on Unix, in Python on Twisted.

The public embedding API (see docs/embedding.md):

- :class:`ServerConfig`: the validated settings;
- :func:`make_service`: a service listening on the configured endpoints;
- :func:`make_pop3_factory`: one protocol factory, for a listener you manage;
- :class:`POP3Factory`: that factory's class;
- :func:`make_smtp_factory`: the SMTP delivery factory, for a listener you manage;
- :func:`load_tls`: the ``--tls-cert``/``--tls-key`` pair, shared by both factories;
- :class:`MailStore`: the on-disk store, e.g. for delivering mail.

The names are imported on first use, so that ``vmspop.cli`` and the twistd plugin
scan do not pull in Twisted's mail package (and its reactor) just by importing.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from vmspop._version import __version__

if TYPE_CHECKING:
    from vmspop.config import ServerConfig
    from vmspop.server import (POP3Factory, load_tls, make_pop3_factory, make_service,
                               make_smtp_factory)
    from vmspop.store import MailStore

__all__ = ["MailStore", "POP3Factory", "ServerConfig", "__version__", "load_tls",
           "make_pop3_factory", "make_service", "make_smtp_factory"]

_HOMES = {
    "ServerConfig": "vmspop.config",
    "MailStore": "vmspop.store",
    "POP3Factory": "vmspop.server",
    "make_pop3_factory": "vmspop.server",
    "make_service": "vmspop.server",
    "make_smtp_factory": "vmspop.server",
    "load_tls": "vmspop.server",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'vmspop' has no attribute {name!r}")
