#!/usr/bin/env python3
"""A real SMTP server for the tokenizer-auth tests, built on aiosmtpd.

Usage: smtp_server.py PORT DIR [--auth USER:PASSWORD]

Listens on 127.0.0.1:PORT (0 = any free port) and prints the bound port as
the first line on stdout. Each accepted message (the DATA content, byte for
byte) is saved as a file NNNNNN-<random>.eml in DIR, written to a hidden
temporary name and renamed, so a reader never sees half a message; the file
is in place before the server answers 250. Any recipient whose address
starts with "reject" is refused with 550. With --auth, AUTH PLAIN/LOGIN is
offered without TLS and required, and only USER:PASSWORD is accepted.

Runs until killed or until stdin is closed. When aiosmtpd is missing it
installs it from PyPI first (the tests need nothing installed by hand);
if that fails it exits with status 3 and a message on stderr.
"""

import itertools
import os
import subprocess
import sys
import threading
import uuid

AIOSMTPD = "aiosmtpd==1.4.6"

try:
    import aiosmtpd  # noqa: F401
except ImportError:
    # Several test processes may get here at once; pip copes.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", AIOSMTPD],
        stdout=subprocess.DEVNULL,
        check=False,
    )

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword
except ImportError:
    sys.stderr.write(
        "smtp_server.py: the Python package aiosmtpd is not installed and could not be; "
        "run `python3 -m pip install '" + AIOSMTPD + "'`\n"
    )
    sys.exit(3)


class Handler:
    """Refuses `reject*` recipients and saves every message into a folder."""

    def __init__(self, folder):
        self.folder = folder
        self.counter = itertools.count(1)
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower().startswith("reject"):
            return "550 5.1.1 Recipient rejected"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            number = next(self.counter)
        name = "%06d-%s.eml" % (number, uuid.uuid4().hex)
        temp = os.path.join(self.folder, "." + name + ".tmp")
        with open(temp, "wb") as f:
            f.write(envelope.content)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temp, os.path.join(self.folder, name))
        return "250 Message accepted for delivery"


class Authenticator:
    """Accepts exactly one user name and password."""

    def __init__(self, user, password):
        self.user = user.encode()
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.user
            and auth_data.password == self.password
        )
        # handled=False: aiosmtpd answers 235, or 535 on a refusal.
        return AuthResult(success=ok, handled=False)


class AnyPortController(Controller):
    """A Controller that can listen on port 0: it learns the bound port
    before aiosmtpd connects to itself to finish starting."""

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def main(argv):
    if len(argv) not in (3, 5) or (len(argv) == 5 and argv[3] != "--auth"):
        sys.stderr.write("usage: smtp_server.py PORT DIR [--auth USER:PASSWORD]\n")
        return 2
    port, folder = int(argv[1]), argv[2]
    os.makedirs(folder, exist_ok=True)

    options = {}
    if len(argv) == 5:
        user, _, password = argv[4].partition(":")
        options = dict(
            authenticator=Authenticator(user, password),
            auth_required=True,
            auth_require_tls=False,
        )

    controller = AnyPortController(Handler(folder), hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        print(controller.port, flush=True)
        # Run until stdin closes (the test process went away) or a signal.
        sys.stdin.read()
    finally:
        controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
