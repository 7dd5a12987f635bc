"""Every refusal of the protocol provoked on the real server, each
surfacing as its exception: `False`, `unauthorized`, and each `error|<code>`,
from a configuration that makes it happen (docs/CONFIGURATION.md)."""

import socket
import sqlite3
import unittest
from typing import List

import support
from support import MAC, PASSWORD, PHONE

from tokenizer_auth_client import (
    Busy,
    Client,
    CredentialsRejected,
    LineTooLong,
    MailUnavailable,
    Malformed,
    MemoryTokenStore,
    PasscodeRequest,
    RateLimited,
    StoredToken,
    StoreUnavailable,
    TcpAuth,
    TooManyConnections,
    Unauthorized,
)


class ClientTestCase(support.ServerTestCase):
    def client(self, **options: object) -> Client:
        client = Client(self.server.host, self.server.port, mac=MAC, **options)  # type: ignore[arg-type]
        self.addCleanup(client.close)
        return client


class Refusals(ClientTestCase):
    # One passcode request per email per window: the second is refused.
    settings = {"passcode_requests_per_email": "1"}

    def test_false_and_unauthorized(self) -> None:
        client = self.client()
        with self.assertRaises(CredentialsRejected):
            client.login(self.account(), PHONE, PASSWORD, "AAAAAA")
        client.store.save(StoredToken("12" * 32, MAC))
        with self.assertRaises(Unauthorized):
            client.request("status")

    def test_malformed_and_the_connection_goes_on(self) -> None:
        client = self.client()
        too_long_email = "x" * 300 + "@example.com"  # the server takes 254 bytes
        with self.assertRaises(Malformed) as caught:
            client.request_passcode(too_long_email, PHONE, PASSWORD)
        self.assertFalse(caught.exception.retryable)
        with self.assertRaises(Malformed):
            client.login("a@example.com", "9" * 65, PASSWORD, "AAAAAA")  # phone over 64 bytes
        with self.assertRaises(CredentialsRejected):
            client.login("nobody@example.com", PHONE, PASSWORD, "AAAAAA")

    def test_line_too_long_closes_and_the_next_call_reconnects(self) -> None:
        client = self.client()
        with self.assertRaises(LineTooLong) as caught:
            client.request_passcode("ada@example.com", PHONE, "p" * 5000)  # max_line is 4096
        self.assertFalse(caught.exception.retryable)
        with self.assertRaises(Malformed):
            client.request_passcode("x" * 300 + "@example.com", PHONE, PASSWORD)

    def test_rate_limited_is_retryable(self) -> None:
        email = self.account()
        client = self.client()
        client.request_passcode(email, PHONE, PASSWORD)
        with self.assertRaises(RateLimited) as caught:
            client.request_passcode(email, PHONE, PASSWORD)
        self.assertTrue(caught.exception.retryable)
        # The old client's class says False, as the legacy port did.
        self.assertEqual(TcpAuth(self.server.host, self.server.port, MAC).require_passcode(email, PHONE, PASSWORD),
                         "False")


class TooManyConnectionsTest(ClientTestCase):
    # The bound is the server's, however many event loops share it out.
    settings = {"max_connections": "2"}

    def test_too_many_connections(self) -> None:
        held: List[socket.socket] = []
        try:
            for _ in range(2):
                held.append(socket.create_connection((self.server.host, self.server.port), timeout=5))
            # Both held connections are accepted before the client's.
            for sock in held:
                sock.sendall(b"\n")
                self.assertEqual(sock.recv(100), b"error|malformed\n")
            client = self.client()
            client.store.save(StoredToken("12" * 32, MAC))
            with self.assertRaises(TooManyConnections) as caught:
                client.request("status")
            self.assertTrue(caught.exception.retryable)
        finally:
            for sock in held:
                sock.close()


class MailUnavailableTest(ClientTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        # A relay on a port where nothing listens.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        cls.settings = {"smtp_host": "127.0.0.1", "smtp_port": str(port), "smtp_security": "plain",
                        "smtp_timeout": "2s"}
        super().setUpClass()

    def test_mail_unavailable(self) -> None:
        with self.assertRaises(MailUnavailable) as caught:
            self.client().request_passcode(self.account(), PHONE, PASSWORD)
        self.assertTrue(caught.exception.retryable)


class BusyTest(ClientTestCase):
    # One password check at a time, and no limit in the way of a burst.
    settings = {"max_password_checks": "1", "hash_workers": "1", "failures_per_email": "0", "failures_per_ip": "0",
                "passcode_requests_per_ip": "0", "passcode_requests_per_email": "0"}

    def test_busy(self) -> None:
        # Pipelined passcode requests each need a password check: beyond
        # the one the server queues, they are told busy.
        burst = [PasscodeRequest(MAC, support.new_email(), PHONE, PASSWORD) for _ in range(16)]
        replies = self.client().pipeline(burst)  # type: ignore[arg-type]
        errors = [r.error() for r in replies]
        self.assertTrue(any(isinstance(e, Busy) for e in errors), errors)
        self.assertTrue(all(isinstance(e, (Busy, CredentialsRejected)) for e in errors), errors)
        with self.assertRaises(Busy) as caught:
            next(r for r in replies if isinstance(r.error(), Busy)).check()
        self.assertTrue(caught.exception.retryable)


class StoreUnavailableTest(ClientTestCase):
    def test_store_unavailable(self) -> None:
        email, other = self.account(), self.account()
        self.client().request_passcode(email, PHONE, PASSWORD)  # the files exist, in WAL mode
        # Another process holds the passcodes file's write lock longer than
        # the server waits for it (5 s): the passcode request's counters
        # cannot be committed.
        lock = sqlite3.connect(str(self.server.data / "op_passcodes.db"), isolation_level=None, timeout=1)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            with self.assertRaises(StoreUnavailable) as caught:
                self.client(store=MemoryTokenStore()).request_passcode(other, PHONE, PASSWORD)
            self.assertTrue(caught.exception.retryable)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        # Once the lock is gone the server serves again.
        self.client().request_passcode(other, PHONE, PASSWORD)


if __name__ == "__main__":
    unittest.main()
