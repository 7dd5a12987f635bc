"""The token file: the format `tokenizer-auth client` writes and reads,
mode 0600 in a 0700 folder, replaced whole."""

import os
import stat
import tempfile
import threading
import unittest
from pathlib import Path

import support  # noqa: F401  (puts the package under test on sys.path)

from tokenizer_auth_client import FileTokenStore, StoredToken, TokenFileError

A = "ab" * 32
B = "cd" * 32


class FileStore(unittest.TestCase):
    def setUp(self) -> None:
        self.folder = tempfile.TemporaryDirectory()
        self.path = Path(self.folder.name) / "new-folder" / "token"

    def tearDown(self) -> None:
        self.folder.cleanup()

    def mode(self, path: Path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    def test_the_token_and_its_mac_on_one_line_privately(self) -> None:
        store = FileTokenStore(self.path)
        self.assertIsNone(store.load())
        store.save(StoredToken(A, support.MAC))
        # Byte for byte what the Rust client writes (cli/src/client.rs).
        self.assertEqual(self.path.read_text(), f"{A} {support.MAC}\n")
        self.assertEqual(self.mode(self.path), 0o600)
        self.assertEqual(self.mode(self.path.parent), 0o700)
        self.assertEqual(store.load(), StoredToken(A, support.MAC))
        store.save(StoredToken(B, "AA-BB-CC-DD-EE-FF"))
        self.assertEqual(store.load(), StoredToken(B, "AA-BB-CC-DD-EE-FF"))
        self.assertEqual(os.listdir(self.path.parent), ["token"], "no temporary file is left")

    def test_files_of_the_rust_client_old_and_new(self) -> None:
        store = FileTokenStore(self.path)
        self.path.parent.mkdir()
        self.path.write_text(f"{B}\n")  # an older client's: the token alone
        self.assertEqual(store.load(), StoredToken(B, None))
        self.path.write_text(f"{B} aabbccddeeff\n")
        self.assertEqual(store.load(), StoredToken(B, "aabbccddeeff"))
        # What follows the MAC is ignored, as the Rust client does.
        self.path.write_text(f"{B} {support.MAC} more\n")
        self.assertEqual(store.load(), StoredToken(B, support.MAC))
        for bad in ("not a token", f"{B} not-a-mac\n", "", "x" * 10000):
            self.path.write_text(bad)
            with self.assertRaises(TokenFileError):
                store.load()

    def test_saves_at_once_leave_one_whole_token(self) -> None:
        store = FileTokenStore(self.path)
        tokens = [f"{i:064x}" for i in range(16)]
        threads = [threading.Thread(target=store.save, args=(StoredToken(t, support.MAC),)) for t in tokens]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        loaded = store.load()
        self.assertIsNotNone(loaded)
        assert loaded is not None
        self.assertIn(loaded.token, tokens)
        self.assertEqual(os.listdir(self.path.parent), ["token"])


if __name__ == "__main__":
    unittest.main()
