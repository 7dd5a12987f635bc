"""The client against a scripted peer, for what a correct server does not
do on demand: a second renewal on the retry, two successors for one token,
an endless reply line, silence."""

import socket
import threading
import unittest
from typing import Callable, Optional

import support  # noqa: F401  (puts the package under test on sys.path)
from support import MAC

from tokenizer_auth_client import (
    Client,
    ConnectionFailed,
    MemoryTokenStore,
    ProtocolViolation,
    StoredToken,
    TokenRenewedAgain,
)

OLD, NEW, NEWER = "aa" * 32, "bb" * 32, "cc" * 32


class Peer:
    """A listener on loopback whose connections are answered by `answer`,
    given each request line; None sends nothing back."""

    def __init__(self, answer: Callable[[bytes], Optional[bytes]]) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(sock,), daemon=True).start()

    def _connection(self, sock: socket.socket) -> None:
        with sock, sock.makefile("rb") as lines:
            try:
                for line in lines:
                    reply = self.answer(line.rstrip(b"\n"))
                    if reply is not None:
                        sock.sendall(reply)
            except (OSError, StopIteration):
                pass  # the client gave up on the connection, as the test wants

    def close(self) -> None:
        self.listener.close()


class Scripted(unittest.TestCase):
    def peer(self, answer: Callable[[bytes], Optional[bytes]]) -> Peer:
        peer = Peer(answer)
        self.addCleanup(peer.close)
        return peer

    def client(self, peer: Peer, **options: object) -> Client:
        options.setdefault("timeout", 2.0)
        client = Client("127.0.0.1", peer.port, store=MemoryTokenStore(StoredToken(OLD, MAC)), **options)  # type: ignore[arg-type]
        self.addCleanup(client.close)
        return client

    def test_a_second_renewal_on_the_retry_is_stored_and_raised(self) -> None:
        def answer(line: bytes) -> bytes:
            return {OLD: f"renew|{NEW}\n", NEW: f"renew|{NEWER}\n"}[line[:64].decode()].encode()

        client = self.client(self.peer(answer))
        with self.assertRaises(TokenRenewedAgain) as caught:
            client.request("status")
        self.assertTrue(caught.exception.retryable)
        self.assertEqual(client.store.load(), StoredToken(NEWER, MAC))

    def test_two_successors_for_one_token_are_a_violation(self) -> None:
        successors = iter([NEW, NEWER])
        client = self.client(self.peer(lambda line: f"renew|{next(successors)}\n".encode()))
        with self.assertRaises(ProtocolViolation):
            client.pipeline(["status", "status"])

    def test_a_reply_line_is_read_up_to_64_kib(self) -> None:
        client = self.client(self.peer(lambda line: b"a" * 100_000))
        with self.assertRaises(ProtocolViolation):
            client.request("status")

    def test_silence_times_out(self) -> None:
        client = self.client(self.peer(lambda line: None), timeout=0.3)
        with self.assertRaises(ConnectionFailed) as caught:
            client.request("status")
        self.assertIn("did not answer", str(caught.exception))

    def test_secrets_stay_out_of_what_is_raised(self) -> None:
        client = self.client(self.peer(lambda line: b"x" + line + b"\n"), mac=MAC)
        for call in (lambda: client.request("status"), lambda: client.login("a@example.com", "", "hunter2", "AB12CD")):
            with self.assertRaises(ProtocolViolation) as caught:
                call()
            for secret in (OLD, "hunter2", "AB12CD"):
                self.assertNotIn(secret, str(caught.exception))


if __name__ == "__main__":
    unittest.main()
