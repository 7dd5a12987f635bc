"""Where the token lives between calls: anything with `load()` and
`save()`. Two are given: one in memory, and a file that
`tokenizer-auth client` reads and writes too.

The file holds the token and the MAC it is bound to, on one line,
`<64 hex digits> <MAC>` and a LF, exactly as `tokenizer-auth client`
writes it (a file written by an older one holds the token alone). It is
created with mode 0600, in a folder created with mode 0700, and replaced
whole on every save: a temporary file beside it, synced, then renamed over
it, so a reader sees the old token or the new one, never a part.
"""

import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol, Union

from .errors import FieldError, TokenFileError
from .wire import check_mac, check_token

# A token file is one short line; more than this is not one.
_MAX_FILE = 4096


@dataclass(frozen=True)
class StoredToken:
    """A base token and the MAC it is bound to (None: not known)."""

    token: str = field(repr=False)
    mac: Optional[str] = None


class TokenStore(Protocol):
    """Keeps the device's token. `save` replaces what `load` returns."""

    def load(self) -> Optional[StoredToken]:
        """The stored token, or None if there is none yet."""
        ...

    def save(self, stored: StoredToken) -> None:
        """Replaces the stored token."""
        ...


class MemoryTokenStore:
    """A token kept in this process only."""

    def __init__(self, stored: Optional[StoredToken] = None) -> None:
        self._stored = stored
        self._lock = threading.Lock()

    def load(self) -> Optional[StoredToken]:
        with self._lock:
            return self._stored

    def save(self, stored: StoredToken) -> None:
        with self._lock:
            self._stored = stored


class FileTokenStore:
    """A token file shared with `tokenizer-auth client --token-file`."""

    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None:
        self.path = Path(path).expanduser()

    def load(self) -> Optional[StoredToken]:
        try:
            with open(self.path, "rb") as file:
                raw = file.read(_MAX_FILE + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise TokenFileError(f"cannot read the token file {self.path}: {e.strerror or e}") from e
        if len(raw) > _MAX_FILE:
            raise TokenFileError(f"the token file {self.path} is too long to be one")
        try:
            fields = raw.decode("ascii").split()
        except UnicodeDecodeError:
            fields = []
        try:
            token = check_token(fields[0]) if fields else None
        except FieldError:
            token = None
        if token is None:
            raise TokenFileError(f"the token file {self.path} does not hold a token")
        # What follows the MAC is ignored, as `tokenizer-auth client` does.
        mac = None
        if len(fields) >= 2:
            try:
                mac = check_mac(fields[1])
            except FieldError:
                raise TokenFileError(f"the token file {self.path} holds no valid MAC") from None
        return StoredToken(token, mac)

    def save(self, stored: StoredToken) -> None:
        check_token(stored.token)
        line = stored.token if stored.mac is None else f"{stored.token} {check_mac(stored.mac)}"
        folder = self.path.parent
        if not folder.is_dir():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Exactly 0700, whatever the umask (as the server's own folders).
            os.chmod(folder, 0o700)
        # A name of its own per save, so that threads and processes saving
        # at once never write into one temporary file.
        temp = folder / f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), 0o600)
                file.write(f"{line}\n".encode("ascii"))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path)
        except BaseException:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise
        _sync_folder(folder)


def _sync_folder(folder: Path) -> None:
    """Makes the rename durable; where a folder cannot be opened for it,
    the rename stands anyway."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
