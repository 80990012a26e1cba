"""The baseline: the POP3 server a Twisted user writes with twisted.mail.pop3.POP3 over Maildir.

    python stock_pop3.py PORT MAILROOT USERSFILE [--nodelay]

Stock ``MaildirMailbox`` opens messages in text mode (broken on Python 3) and LISTs
file sizes, not wire sizes, so this is the minimal IMailbox a user writes instead:
files in new/ and cur/ sorted by name, read as bytes, the wire size (CRLF) counted
by reading each file once.  ``--nodelay`` sets TCP_NODELAY on each connection.
"""
import os, sys
from twisted.cred import checkers, portal
from twisted.internet import protocol, reactor
from twisted.mail import pop3
from twisted.python import log
from zope.interface import implementer

@implementer(pop3.IMailbox)
class Mailbox:
    def __init__(self, path):
        names = [os.path.join(path, d, n) for d in ("new", "cur") for n in os.listdir(os.path.join(path, d))]
        self.files, self.sizes, self.deleted = sorted(names, key=os.path.basename), {}, set()
    def _size(self, i):
        if i not in self.sizes:
            with open(self.files[i], "rb") as f:
                data = f.read()
            self.sizes[i] = len(data) + data.count(b"\n")
        return self.sizes[i]
    def listMessages(self, i=None):
        if i is None:
            return [0 if j in self.deleted else self._size(j) for j in range(len(self.files))]
        return 0 if i in self.deleted else self._size(i)
    def getMessage(self, i): return open(self.files[i], "rb")
    def getUidl(self, i): return os.path.basename(self.files[i]).split(",")[0].encode()
    def deleteMessage(self, i): self.deleted.add(i)
    def undeleteMessages(self): self.deleted.clear()
    def sync(self): pass

@implementer(portal.IRealm)
class Realm:
    def requestAvatar(self, avatarId, mind, *interfaces):
        return pop3.IMailbox, Mailbox(os.path.join(sys.argv[2], avatarId.decode(), "NEWMAIL")), lambda: None

class POP3(pop3.POP3):
    def connectionMade(self):
        if "--nodelay" in sys.argv:
            self.transport.setTcpNoDelay(True)
        super().connectionMade()

users = dict(line.split(":", 1) for line in open(sys.argv[3]).read().split())
db = checkers.InMemoryUsernamePasswordDatabaseDontUse(
    **{u: p.removeprefix("{PLAIN}").encode() for u, p in users.items()})
class Factory(protocol.ServerFactory):
    protocol, portal = POP3, portal.Portal(Realm(), [db])
    def buildProtocol(self, addr):
        p = super().buildProtocol(addr); p.portal = self.portal
        return p

log.startLogging(sys.stdout)
reactor.listenTCP(int(sys.argv[1]), Factory(), interface="127.0.0.1")
reactor.run()
