"""What the tests share: the real `tokenizer-auth` binary started on
loopback with free ports and a temporary data folder, its accounts, the
passcodes it mails to its outbox, and test certificates made with openssl.

The binary is `TOKENIZER_AUTH_BIN`, else `target/debug/tokenizer-auth` at
the repository's root. The package under test is the source tree's
(`clients/python/src`), unless `TOKENIZER_AUTH_CLIENT_INSTALLED=1` says to
test the installed one.
"""

import email
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import unittest
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

if os.environ.get("TOKENIZER_AUTH_CLIENT_INSTALLED") != "1":
    sys.path.insert(0, str(HERE.parent / "src"))

BINARY = Path(os.environ.get("TOKENIZER_AUTH_BIN") or ROOT / "target" / "debug" / "tokenizer-auth")

MAC = "aa:bb:cc:dd:ee:ff"
PASSWORD = "correct horse battery"
PHONE = "555-0100"

_emails = itertools.count(1)


def new_email() -> str:
    """An address no other test uses, so that no per-email limit of one
    test counts another's requests."""
    return f"user{next(_emails)}@example.com"


class Server:
    """A running `tokenizer-auth serve`. `settings` are configuration keys
    (`token_ttl="1s"`), given as `TOKENIZER_AUTH_*` variables."""

    def __init__(self, **settings: str) -> None:
        if not BINARY.is_file():
            raise RuntimeError(
                f"no server binary at {BINARY}: build it with `cargo build -p tokenizer-auth`, "
                "or name one in TOKENIZER_AUTH_BIN"
            )
        self.folder = Path(tempfile.mkdtemp(prefix="tokenizer-auth-client-test-"))
        self.data = self.folder / "data"
        # Only what the test sets: no TOKENIZER_AUTH_* of the caller's
        # environment (a store URL, say) leaks into the server.
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TOKENIZER_AUTH_LOG_FORMAT": "json"}
        self.env.update({f"TOKENIZER_AUTH_{key.upper()}": value for key, value in settings.items()})
        self.log: List[str] = []
        self._listening = threading.Event()
        self.addresses: Dict[str, Tuple[str, int]] = {}
        self.process = subprocess.Popen(
            [str(BINARY), "--data-dir", str(self.data), "serve", "--listen", "127.0.0.1:0",
             "--legacy-passcode-listen", "127.0.0.1:0", "--legacy-login-listen", "127.0.0.1:0"],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        # The log is read to its end by a thread, so the server never
        # blocks on a full pipe; the `listening` line names the ports.
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._listening.wait(20):
            self.stop()
            raise RuntimeError("the server did not start listening:\n" + "\n".join(self.log[-20:]))
        self.host, self.port = self.addresses["native"]

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.log.append(line)
            if '"listening"' in line:
                fields = json.loads(line).get("fields", {})
                for name in ("native", "legacy_passcode", "legacy_login"):
                    host, port = fields[name].rsplit(":", 1)
                    self.addresses[name] = (host, int(port))
                self._listening.set()
        self.process.stderr.close()

    def add_user(self, email_address: str, phone: str = PHONE, password: str = PASSWORD) -> None:
        subprocess.run(
            [str(BINARY), "--data-dir", str(self.data), "user", "add", email_address, "--phone", phone,
             "--password-stdin"],
            input=f"{password}\n".encode(), env=self.env, check=True, stdout=subprocess.DEVNULL, timeout=30,
        )

    def mails(self, email_address: str) -> List[Path]:
        """The mails in the outbox for `email_address`, oldest first (the
        file names start with the time they were written)."""
        outbox = self.data / "outbox"
        found = []
        for path in sorted(outbox.glob("*.eml")) if outbox.is_dir() else []:
            with open(path, "rb") as file:
                if email.message_from_binary_file(file)["To"] == email_address:
                    found.append(path)
        return found

    def passcode(self, email_address: str) -> str:
        """The passcode of the newest mail to `email_address`."""
        mails = self.mails(email_address)
        if not mails:
            raise AssertionError(f"no mail for {email_address} in the outbox")
        found = re.search(r" is: ([A-Z0-9]{6})\b", mails[-1].read_text())
        if found is None:
            raise AssertionError(f"no passcode in {mails[-1]}")
        return found.group(1)

    def stop(self) -> Optional[int]:
        """SIGTERM, then the exit status (killed if it takes over 15 s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
        return self.process.returncode


class ServerTestCase(unittest.TestCase):
    """Tests sharing one server, started with `settings` for the class and
    stopped after it; the server must exit 0 on SIGTERM."""

    settings: Dict[str, str] = {}
    server: Server

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = Server(**cls.settings)

    @classmethod
    def tearDownClass(cls) -> None:
        status = cls.server.stop()
        if status != 0:
            raise AssertionError(f"the server exited {status} on SIGTERM:\n" + "\n".join(cls.server.log[-20:]))

    def account(self) -> str:
        """A new account on the server: its email (the phone is PHONE and
        the password PASSWORD)."""
        address = new_email()
        self.server.add_user(address)
        return address


def openssl() -> str:
    """The openssl program, installed (Debian's package, once, as the
    project's other test tools are) when missing."""
    found = shutil.which("openssl")
    if found:
        return found
    script = HERE / "install-openssl.sh"
    result = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, check=True, timeout=1300)
    return result.stdout.decode().strip()


def make_certificates(folder: Path) -> Dict[str, Path]:
    """A test CA and a server certificate it signs for 127.0.0.1 and
    localhost (`ca`, `cert`, `key`), and a second CA that signs nothing
    the server shows (`other_ca`)."""
    program = openssl()

    def run(*args: str) -> None:
        subprocess.run([program, *args], cwd=folder, check=True, capture_output=True, timeout=60)

    def authority(name: str) -> None:
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=tokenizer-auth test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    authority("ca")
    authority("other-ca")
    (folder / "server.ext").write_text(
        "basicConstraints = critical,CA:FALSE\n"
        "keyUsage = critical,digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "0x5eed",
        "-days", "2", "-extfile", "server.ext", "-out", "server.pem")
    return {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key",
            "other_ca": folder / "other-ca.pem"}
