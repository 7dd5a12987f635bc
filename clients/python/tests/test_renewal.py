"""Transparent renewal against the real server with a 2-second token
lifetime (short, yet long enough for a burst on a busy machine): one
request, a pipelined burst of 100, two clients at once, and the renewed
token in the file `tokenizer-auth client` reads."""

import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path
from typing import List, Optional

import support
from support import MAC, PASSWORD, PHONE

from tokenizer_auth_client import Client, FileTokenStore, ReplyKind, StoredToken, TokenRequest

TTL = 2.0


class CountingStore(FileTokenStore):
    """A token file that counts its saves."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.saves: List[str] = []
        self._lock = threading.Lock()

    def save(self, stored: StoredToken) -> None:
        with self._lock:
            self.saves.append(stored.token)
        super().save(stored)


class Renewal(support.ServerTestCase):
    settings = {"token_ttl": f"{TTL:.0f}s"}

    def setUp(self) -> None:
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        self.folder = Path(folder.name)
        self.store = CountingStore(self.folder / "client-token")

    def logged_in(self, store: Optional[CountingStore] = None) -> Client:
        store = store or self.store
        email = self.account()
        client = Client(self.server.host, self.server.port, mac=MAC, store=store)
        self.addCleanup(client.close)
        client.request_passcode(email, PHONE, PASSWORD)
        client.login(email, PHONE, PASSWORD, self.server.passcode(email))
        client.request("status")
        return client

    def expire(self) -> None:
        time.sleep(TTL + 0.2)

    def token(self) -> str:
        stored = self.store.load()
        assert stored is not None
        return stored.token

    def test_an_expired_token_is_renewed_and_the_request_made(self) -> None:
        client = self.logged_in()
        old, saved = self.token(), len(self.store.saves)
        self.expire()
        client.request("status")  # renew|X, X stored, the request made again with X
        new = self.token()
        self.assertNotEqual(new, old)
        self.assertEqual(self.store.saves[saved:], [new], "the successor, stored once")
        self.assertEqual(self.store.load(), StoredToken(new, MAC))
        client.request("status")
        # Within the renewal grace the old token still learns the same
        # successor (docs/PROTOCOL.md, "Renewal"); it is not stored again.
        reply = client.pipeline([TokenRequest(old, MAC, "status")])[0]
        self.assertEqual((reply.kind, reply.token), (ReplyKind.RENEW, new))
        # `tokenizer-auth client` takes the renewed token from the file.
        result = subprocess.run(
            [str(support.BINARY), "--data-dir", str(self.folder), "client", "request",
             "--addr", f"{self.server.host}:{self.server.port}", "--token-file", str(self.store.path), "status"],
            env=self.server.env, capture_output=True, timeout=60,
        )
        self.assertEqual(result.stdout, b"authorized\n", result.stderr)

    def test_a_pipelined_burst_of_100_with_an_expired_token(self) -> None:
        client = self.logged_in()
        old, saved = self.token(), len(self.store.saves)
        self.expire()
        # Every copy of the expired token is told the same successor; the
        # foreign tokens at every tenth place stay unauthorized, in place.
        foreign = "ee" * 32
        calls: List[object] = [
            TokenRequest(foreign, MAC, "status") if i % 10 == 9 else ("status", str(i)) for i in range(100)
        ]
        client.window = 128  # all of them sent before the first reply is read
        replies = client.pipeline(calls)  # type: ignore[arg-type]
        expected = [ReplyKind.UNAUTHORIZED if i % 10 == 9 else ReplyKind.AUTHORIZED for i in range(100)]
        self.assertEqual([r.kind for r in replies], expected)
        new = self.token()
        self.assertNotEqual(new, old)
        self.assertEqual(self.store.saves[saved:], [new], "one successor, stored once")
        # Again with a small window: requests not yet sent when the renewal
        # arrives go out with the successor at once.
        self.expire()
        client.window = 8
        replies = client.pipeline(["status"] * 100)
        self.assertEqual([r.kind for r in replies], [ReplyKind.AUTHORIZED] * 100)
        self.assertEqual(len(self.store.saves), saved + 2)
        self.assertNotEqual(self.token(), new)

    def test_two_clients_sharing_one_file_renew_at_once(self) -> None:
        first = self.logged_in()
        second = Client(self.server.host, self.server.port, store=self.store)
        self.addCleanup(second.close)
        old, saved = self.token(), len(self.store.saves)
        self.expire()
        errors: List[BaseException] = []

        def burst(client: Client) -> None:
            try:
                self.assertTrue(all(r.ok for r in client.pipeline(["status"] * 50)))
            except BaseException as e:  # reported below, in the test's thread
                errors.append(e)

        threads = [threading.Thread(target=burst, args=(c,)) for c in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(errors, [])
        # Both learned the one successor; each stored it (at most) once.
        successors = set(self.store.saves[saved:])
        self.assertEqual(len(successors), 1)
        self.assertLessEqual(len(self.store.saves) - saved, 2)
        self.assertEqual(self.token(), successors.pop())
        self.assertNotEqual(self.token(), old)


if __name__ == "__main__":
    unittest.main()
