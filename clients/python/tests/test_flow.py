"""The whole flow against the real server over plain TCP: a passcode, a
login, token requests; the token file shared with `tokenizer-auth client`;
pipelining; a kept connection the server closed meanwhile."""

import os
import secrets
import subprocess
import tempfile
import time
import unittest
from pathlib import Path
from typing import List

import support
from support import MAC, PASSWORD, PHONE

from tokenizer_auth_client import (
    Client,
    CredentialsRejected,
    FileTokenStore,
    LoginRequest,
    MemoryTokenStore,
    NoToken,
    ReplyKind,
    StoredToken,
    TokenRequest,
    Unauthorized,
)


class Flow(support.ServerTestCase):
    # Short, so the kept-connection test need not wait a minute.
    settings = {"idle_timeout": "1s"}

    def setUp(self) -> None:
        self.folder = tempfile.TemporaryDirectory()
        self.addCleanup(self.folder.cleanup)
        self.token_file = Path(self.folder.name) / "client-token"

    def client(self, **options: object) -> Client:
        client = Client(self.server.host, self.server.port, **options)  # type: ignore[arg-type]
        self.addCleanup(client.close)
        return client

    def log_in(self, client: Client, email: str) -> str:
        client.request_passcode(email, PHONE, PASSWORD)
        return client.login(email, PHONE, PASSWORD, self.server.passcode(email))

    def cli(self, *args: str, password: bool = False) -> str:
        """`tokenizer-auth client ...` against this server; its stdout."""
        result = subprocess.run(
            [str(support.BINARY), "--data-dir", self.folder.name, "client", args[0],
             "--addr", f"{self.server.host}:{self.server.port}", *args[1:]],
            input=f"{PASSWORD}\n".encode() if password else None, env=self.server.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr.decode())
        return result.stdout.decode()

    def test_passcode_login_request(self) -> None:
        email = self.account()
        client = self.client(mac=MAC, store=FileTokenStore(self.token_file))
        client.request_passcode(email, PHONE, PASSWORD)
        passcode = self.server.passcode(email)
        token = client.login(email, PHONE, PASSWORD, passcode)
        self.assertRegex(token, r"^[0-9a-f]{64}$")
        self.assertEqual(FileTokenStore(self.token_file).load(), StoredToken(token, MAC))
        self.assertEqual(os.stat(self.token_file).st_mode & 0o777, 0o600)
        client.request("status")
        client.request("put", "key", "value with spaces", "")
        # The passcode is spent.
        with self.assertRaises(CredentialsRejected):
            client.login(email, PHONE, PASSWORD, passcode)
        # A device restarted: a new client, the token from the file, and
        # the MAC stored with it.
        self.client(store=FileTokenStore(self.token_file)).request("status")

    def test_the_token_file_is_shared_with_the_rust_client(self) -> None:
        email = self.account()
        # Python logs in; `tokenizer-auth client request` uses its file.
        self.log_in(self.client(mac=MAC, store=FileTokenStore(self.token_file)), email)
        self.assertEqual(self.cli("request", "--token-file", str(self.token_file), "status"), "authorized\n")
        # The Rust client logs in; Python uses its file.
        other = Path(self.folder.name) / "rust-token"
        self.cli("passcode", "--mac", "AA-BB-CC-DD-EE-01", "--email", email, "--phone", PHONE, "--password-stdin",
                 password=True)
        self.cli("login", "--mac", "AA-BB-CC-DD-EE-01", "--email", email, "--phone", PHONE,
                 "--passcode", self.server.passcode(email), "--token-file", str(other), "--password-stdin",
                 password=True)
        stored = FileTokenStore(other).load()
        assert stored is not None
        self.assertEqual(stored.mac, "AA-BB-CC-DD-EE-01")
        self.client(store=FileTokenStore(other)).request("status")

    def test_wrong_credentials_and_unknown_tokens(self) -> None:
        email = self.account()
        client = self.client(mac=MAC)
        with self.assertRaises(CredentialsRejected):
            client.request_passcode(email, PHONE, "wrong password")
        with self.assertRaises(CredentialsRejected):
            client.login(email, PHONE, PASSWORD, "AAAAAA")
        with self.assertRaises(NoToken):
            client.request("status")
        client.store.save(StoredToken(secrets.token_hex(32), MAC))
        with self.assertRaises(Unauthorized):
            client.request("status")
        # The same connection goes on after refusals.
        with self.assertRaises(Unauthorized):
            client.request("status")

    def test_pipelining_100_requests_answered_in_order(self) -> None:
        email = self.account()
        client = self.client(mac=MAC)
        self.log_in(client, email)
        # Three kinds of reply at known places: the stored token's
        # `authorized`, a foreign token's `unauthorized`, and a login whose
        # email is too long for the server, `error|malformed`.
        calls: List[object] = []
        for i in range(100):
            if i % 10 == 3:
                calls.append(TokenRequest(secrets.token_hex(32), MAC, "status"))
            elif i % 10 == 7:
                calls.append(LoginRequest(MAC, "x" * 300 + "@example.com", PHONE, PASSWORD, "AAAAAA"))
            else:
                calls.append(("status", str(i)))
        replies = client.pipeline(calls)  # type: ignore[arg-type]
        kinds = [r.kind for r in replies]
        expected = [
            ReplyKind.UNAUTHORIZED if i % 10 == 3 else ReplyKind.ERROR if i % 10 == 7 else ReplyKind.AUTHORIZED
            for i in range(100)
        ]
        self.assertEqual(kinds, expected)
        self.assertEqual({r.code for r in replies if r.kind is ReplyKind.ERROR}, {"malformed"})
        # Many more than the window and the server's max_pipeline (64).
        self.assertEqual([r.kind for r in client.pipeline(["status"] * 1000)], [ReplyKind.AUTHORIZED] * 1000)

    def test_a_kept_connection_closed_by_the_server_is_replaced(self) -> None:
        email = self.account()
        client = self.client(mac=MAC, store=MemoryTokenStore())
        self.log_in(client, email)
        client.request("status")
        time.sleep(1.5)  # past the server's idle_timeout: it closed the connection
        with self.assertLogs("tokenizer_auth_client", "DEBUG") as logs:
            client.request("status")
        self.assertIn("closed by the server", "\n".join(logs.output))


if __name__ == "__main__":
    unittest.main()
