"""vmspop: the OpenVMS TCP/IP Services POP3 server, on Unix, in Python on Twisted.

The public embedding API (see docs/embedding.md):

- :class:`ServerConfig`: the validated settings;
- :func:`make_service`: a service listening on the configured endpoints;
- :func:`make_pop3_factory`: one protocol factory, for a listener you manage;
- :class:`MailStore`: the on-disk store, e.g. for delivering mail.
"""

from vmspop._version import __version__
from vmspop.config import ServerConfig
from vmspop.server import POP3Factory, make_pop3_factory, make_service
from vmspop.store import MailStore

__all__ = ["MailStore", "POP3Factory", "ServerConfig", "__version__", "make_pop3_factory",
           "make_service"]
