"""One connection to the native listener, plaintext or TLS: bytes out,
reply lines in. Every socket operation has the connection's timeout, and a
reply line is read up to `wire.MAX_REPLY` bytes, no further."""

import socket
import ssl
from typing import Optional

from .errors import ConnectionClosed, ConnectionFailed, ProtocolViolation, TlsError
from .wire import MAX_REPLY


def tls_context(cafile: Optional[str] = None) -> ssl.SSLContext:
    """A client context that trusts the system's roots and, if given, the
    certificates in `cafile` (as `tokenizer-auth client --ca` does); the
    server's certificate must name the host asked for. TLS 1.2 or 1.3,
    which is what the server speaks."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cafile is not None:
        try:
            context.load_verify_locations(cafile=cafile)
        except (OSError, ssl.SSLError) as e:
            raise TlsError(f"cannot load the CA certificates in {cafile}: {e}") from e
    return context


class Connection:
    """A connected socket and what has been read of it but not yet taken."""

    def __init__(self, sock: socket.socket, label: str, timeout: float) -> None:
        self._sock: Optional[socket.socket] = sock
        self._label = label
        self._timeout = timeout
        self._buffer = bytearray()
        #: Reply lines taken so far.
        self.replies = 0

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        timeout: float,
        tls: Optional[ssl.SSLContext] = None,
        server_name: Optional[str] = None,
    ) -> "Connection":
        """Connects and, with TLS, completes the handshake, so a certificate
        that is refused is refused before any request is sent."""
        label = f"{host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise ConnectionFailed(f"cannot connect to {label}: {_reason(e)}") from e
        try:
            # Requests are small and answered one by one: no Nagle delay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=server_name or host)
        except ssl.SSLCertVerificationError as e:
            sock.close()
            raise TlsError(f"TLS with {label} failed: the certificate was refused: {e.verify_message}") from e
        except (ssl.SSLError, OSError) as e:
            sock.close()
            hint = " (is TLS on at the server?)" if "WRONG_VERSION_NUMBER" in str(e) else ""
            raise TlsError(f"TLS with {label} failed: {_reason(e)}{hint}") from e
        return cls(sock, label, timeout)

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    def send(self, data: bytes) -> None:
        """Sends all of `data` (request lines: never repeated in an error)."""
        sock = self._live()
        try:
            sock.sendall(data)
        except OSError as e:
            self.close()
            raise self._failure("sending", e) from e

    def read_line(self) -> bytes:
        """The next reply line, without its LF (and a CR before it)."""
        sock = self._live()
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                self.replies += 1
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buffer) > MAX_REPLY:
                self.close()
                raise ProtocolViolation(f"{self._label} sent a reply line over {MAX_REPLY} bytes")
            try:
                chunk = sock.recv(65536)
            except OSError as e:
                self.close()
                raise self._failure("reading", e) from e
            if not chunk:
                partial = bytes(self._buffer)
                self.close()
                if partial.startswith(b"\x80"):
                    # Pickle's first byte, unterminated: the old server's
                    # ports answer so, and close.
                    raise ProtocolViolation(f"{self._label} answered with a pickle: is it a legacy port?")
                raise ConnectionClosed(f"{self._label} closed the connection without a reply")
            self._buffer += chunk

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buffer.clear()

    def _live(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionClosed(f"the connection to {self._label} is closed")
        return self._sock

    def _failure(self, doing: str, e: OSError) -> ConnectionFailed:
        if isinstance(e, socket.timeout):
            return ConnectionFailed(f"{self._label} did not answer within {self._timeout:g} s")
        if isinstance(e, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)):
            return ConnectionClosed(f"{self._label} closed the connection ({doing}): {_reason(e)}")
        return ConnectionFailed(f"connection to {self._label} failed ({doing}): {_reason(e)}")


def _reason(e: BaseException) -> str:
    """An OS or TLS error's reason, in a few words."""
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, ssl.SSLError) and e.reason:
        return str(e.reason)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
