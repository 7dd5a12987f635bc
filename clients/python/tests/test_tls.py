"""TLS against the real server, with a test CA made by openssl: the flow
and `TcpAuth` over TLS, and certificates the client must refuse, refused
before any request is sent."""

import shutil
import tempfile
import unittest
from pathlib import Path
from typing import Any, Dict

import support
from support import MAC, PASSWORD, PHONE

from tokenizer_auth_client import (
    LOGIN_PREFIX,
    Client,
    ConnectionFailed,
    MemoryTokenStore,
    TcpAuth,
    TlsError,
)


class Tls(support.ServerTestCase):
    pki: Path
    certs: Dict[str, Path]

    @classmethod
    def setUpClass(cls) -> None:
        cls.pki = Path(tempfile.mkdtemp(prefix="tokenizer-auth-client-pki-"))
        cls.certs = support.make_certificates(cls.pki)
        cls.settings = {"tls_cert": str(cls.certs["cert"]), "tls_key": str(cls.certs["key"])}
        super().setUpClass()

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super().tearDownClass()
        finally:
            shutil.rmtree(cls.pki, ignore_errors=True)

    def client(self, **options: object) -> Client:
        client = Client(self.server.host, self.server.port, **options)  # type: ignore[arg-type]
        self.addCleanup(client.close)
        return client

    def test_the_flow_over_tls(self) -> None:
        email = self.account()
        client = self.client(mac=MAC, cafile=str(self.certs["ca"]))
        client.request_passcode(email, PHONE, PASSWORD)
        client.login(email, PHONE, PASSWORD, self.server.passcode(email))
        client.request("status")
        self.assertTrue(all(r.ok for r in client.pipeline(["status"] * 100)))
        # By name too: the certificate names localhost.
        store = client.store
        self.client(cafile=str(self.certs["ca"]), store=store, server_name="localhost").request("status")

    def test_tcp_auth_over_tls(self) -> None:
        email = self.account()
        auth = TcpAuth(self.server.host, self.server.port, MAC, cafile=str(self.certs["ca"]))
        self.assertEqual(auth.require_passcode(email, PHONE, PASSWORD), "Passcode is sent")
        reply = auth.get_initial_token(email, PHONE, PASSWORD, self.server.passcode(email))
        self.assertTrue(reply.startswith(LOGIN_PREFIX))
        self.assertRegex(reply[len(LOGIN_PREFIX):], r"^[0-9a-f]{64}$")

    def test_untrusted_certificates_are_refused_before_any_request(self) -> None:
        email = self.account()
        refused: Dict[str, Dict[str, Any]] = {
            "the system's roots only": {"tls": True},
            "another CA": {"cafile": str(self.certs["other_ca"])},
            "another name": {"cafile": str(self.certs["ca"]), "server_name": "auth.example.com"},
        }
        for case, options in refused.items():
            with self.subTest(case):
                client = self.client(mac=MAC, **options)
                with self.assertRaises(TlsError) as caught:
                    client.connect()
                self.assertFalse(caught.exception.retryable)
                with self.assertRaises(TlsError):
                    client.request_passcode(email, PHONE, PASSWORD)
                auth = TcpAuth(self.server.host, self.server.port, MAC, **options)  # type: ignore[arg-type]
                with self.assertRaises(TlsError):
                    auth.require_passcode(email, PHONE, PASSWORD)
        # None of those requests reached the server: no mail, no audit line.
        self.assertEqual(self.server.mails(email), [])
        self.assertFalse([line for line in self.server.log if email in line])

    def test_plaintext_to_the_tls_listener_gets_no_reply(self) -> None:
        client = self.client(mac=MAC, store=MemoryTokenStore())
        with self.assertRaises(ConnectionFailed):
            client.request_passcode(support.new_email(), PHONE, PASSWORD)


class TlsToPlaintext(support.ServerTestCase):
    def test_tls_to_a_plaintext_listener_is_refused(self) -> None:
        client = Client(self.server.host, self.server.port, mac=MAC, cafile=None, tls=True, timeout=5)
        self.addCleanup(client.close)
        with self.assertRaises(TlsError) as caught:
            client.connect()
        self.assertIn("is TLS on at the server?", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
