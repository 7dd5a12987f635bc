"""`TcpAuth` running the old client's own sequence of calls against the
real server: `require_passcode`, the passcode read from the mail, then
`get_initial_token`; the values it returns are the ones the old client
got from the legacy ports for the same calls."""

import pickle
import re
import socket
import tempfile
import unittest
from pathlib import Path
from typing import Any

import support
from support import MAC, PASSWORD, PHONE

from tokenizer_auth_client import LOGIN_PREFIX, Client, FileTokenStore, TcpAuth, device_mac

LOGIN_REPLY = re.compile("^" + re.escape(LOGIN_PREFIX) + "[0-9a-f]{64}$")


class LegacyTcpAuth:
    """The old client as docs/PROTOCOL.md ("Legacy protocol") describes
    it: a connection per request to the legacy ports, one unterminated
    write, one read into a 500-byte buffer, `pickle.loads`."""

    def __init__(self, host: str, passcode_port: int, login_port: int, mac: str) -> None:
        self.host, self.passcode_port, self.login_port, self.mac = host, passcode_port, login_port, mac

    def _ask(self, port: int, request: str) -> Any:
        with socket.create_connection((self.host, port), timeout=30) as sock:
            sock.sendall(request.encode())
            return pickle.loads(sock.recv(500))

    def require_passcode(self, email: str, phone: str, password: str) -> Any:
        return self._ask(self.passcode_port, f"require_passcode|{self.mac}|{password}|{phone}|{email}")

    def get_initial_token(self, email: str, phone: str, password: str, passcode: str) -> Any:
        return self._ask(self.login_port, f"{self.mac}|{email}|{phone}|{password}|{passcode}")


class Compatibility(support.ServerTestCase):
    def old_device(self, auth: Any, email: str) -> list:
        """What an old device does, whichever class it imported; returns
        every value the calls gave it."""
        seen = [auth.require_passcode(email, PHONE, PASSWORD)]
        seen.append(auth.get_initial_token(email, PHONE, PASSWORD, self.server.passcode(email)))
        # The passcode is spent now: a second login with it fails.
        seen.append(auth.get_initial_token(email, PHONE, PASSWORD, self.server.passcode(email)))
        seen.append(auth.require_passcode(email, PHONE, "wrong password"))
        seen.append(auth.require_passcode("nobody@example.com", PHONE, PASSWORD))
        return seen

    def test_the_old_call_sequence_gives_the_old_values(self) -> None:
        email = self.account()
        legacy = self.server.addresses
        old = self.old_device(
            LegacyTcpAuth(self.server.host, legacy["legacy_passcode"][1], legacy["legacy_login"][1], MAC), email
        )
        new = self.old_device(TcpAuth(self.server.host, self.server.port, MAC), email)
        for values in (old, new):
            self.assertTrue(all(type(v) is str for v in values), values)
            self.assertEqual(values[0], "Passcode is sent")
            self.assertRegex(values[1], LOGIN_REPLY)
            self.assertEqual(values[2:], ["False", "False", "False"])
        self.assertEqual(old[0], new[0])
        self.assertEqual(old[2:], new[2:])
        self.assertNotEqual(old[1], new[1], "two logins, two tokens")

    def test_the_token_it_logs_in_serves_the_native_client(self) -> None:
        email = self.account()
        with tempfile.TemporaryDirectory() as folder:
            store = FileTokenStore(Path(folder) / "token")
            auth = TcpAuth(self.server.host, self.server.port, MAC, store=store)
            self.assertEqual(auth.require_passcode(email, PHONE, PASSWORD), "Passcode is sent")
            reply = auth.get_initial_token(email, PHONE, PASSWORD, self.server.passcode(email))
            stored = store.load()
            assert stored is not None
            self.assertEqual(reply, LOGIN_PREFIX + stored.token)
            with Client(self.server.host, self.server.port, store=store) as client:
                client.request("status")

    def test_values_the_legacy_port_would_have_refused_are_false(self) -> None:
        auth = TcpAuth(self.server.host, self.server.port, MAC)
        self.assertEqual(auth.require_passcode("ada@example.com", PHONE, "pass|word"), "False")
        self.assertEqual(auth.get_initial_token("ada@example.com", PHONE, PASSWORD, "AB\nCD"), "False")

    def test_the_mac_defaults_to_this_machines(self) -> None:
        try:
            mac = device_mac()
        except ValueError:
            self.skipTest("this machine shows no MAC address to Python's uuid.getnode()")
        self.assertRegex(mac, r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
        self.assertEqual(TcpAuth(self.server.host, self.server.port).mac, mac)


if __name__ == "__main__":
    unittest.main()
