"""The ``twistd vmspop`` plugin.

This module is imported by Twisted's plugin discovery, so it must stay cheap:
ServiceMaker resolves ``vmspop.tap`` lazily, only when the plugin is used.
There is deliberately no ``__init__.py`` in ``twisted/`` or ``twisted/plugins/``.
"""

from twisted.application.service import ServiceMaker

vmspop = ServiceMaker(
    "vmspop",
    "vmspop.tap",
    "POP3 server with OpenVMS TCP/IP Services semantics (NEWMAIL/MAIL, APOP secrets)",
    "vmspop",
)
