"""`Client`: a device's side of the native protocol, over one persistent
connection (plaintext or TLS), with transparent renewal.

Renewal (docs/PROTOCOL.md, "Renewal"): a token request answered
`renew|X` was not performed; X is the token's one successor. The client
stores X (once, however many replies of a pipelined burst name it: they all
name the same one within the server's renewal grace), and sends the request
again, once, with X. Requests of a burst not yet sent by then go out with X
at once.
"""

import logging
import ssl
import threading
from collections import deque
from dataclasses import replace
from typing import Deque, Dict, List, Optional, Sequence, Tuple, Union

from .connection import Connection, tls_context
from .errors import ConnectionClosed, FieldError, NoToken, ProtocolViolation
from .store import MemoryTokenStore, StoredToken, TokenStore
from .wire import (
    LoginRequest,
    PasscodeRequest,
    Reply,
    ReplyKind,
    Request,
    TokenRequest,
    check_mac,
    parse_reply,
)

log = logging.getLogger("tokenizer_auth_client")

#: A request made with the stored token: its REQUEST alone, or REQUEST and
#: its DATA fields.
Call = Union[str, Tuple[str, ...]]

# Replies after which the server closes the connection.
_CLOSING = ("line_too_long", "too_many_connections")


class Client:
    """A client of the native listener.

    `mac` is the device's MAC address, needed to log in; requests use the
    MAC stored with the token unless `mac` is given. `store` keeps the token
    (by default in memory only; `FileTokenStore` shares it with
    `tokenizer-auth client`). `tls=True` speaks TLS trusting the system's
    roots, `cafile` also trusts the certificates in that file (and implies
    TLS), or `tls` may be an `ssl.SSLContext` of your own; the certificate
    must name `server_name`, by default `host`. `timeout` (seconds) bounds
    each connect, send and read. At most `window` requests are in flight at
    once on the connection.

    A client is safe to share between threads (one call at a time goes
    over its connection); close it, or use it in a `with` block.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7160,
        *,
        mac: Optional[str] = None,
        store: Optional[TokenStore] = None,
        tls: Union[bool, ssl.SSLContext] = False,
        cafile: Optional[str] = None,
        server_name: Optional[str] = None,
        timeout: float = 30.0,
        window: int = 128,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be more than 0 seconds")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.host = host
        self.port = port
        self.mac = check_mac(mac) if mac is not None else None
        self.store: TokenStore = store if store is not None else MemoryTokenStore()
        self.timeout = timeout
        self.window = window
        self._server_name = server_name
        self._tls: Optional[ssl.SSLContext]
        if isinstance(tls, ssl.SSLContext):
            self._tls = tls
        elif tls or cafile is not None:
            self._tls = tls_context(cafile)
        else:
            self._tls = None
        self._connection: Optional[Connection] = None
        # Reentrant: `pipeline` holds it while `_send` takes it again.
        self._lock = threading.RLock()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection (the next call opens another)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def connect(self) -> None:
        """Opens the connection now (calls open it when needed): with TLS,
        a certificate that is refused raises `TlsError` here."""
        with self._lock:
            self._connect()

    def request_passcode(self, email: str, phone: str, password: str) -> None:
        """Asks the server to mail a passcode for this device (the account's
        phone may be empty if none is on file). Returns once the passcode
        is sent; raises `CredentialsRejected` for wrong credentials."""
        request = PasscodeRequest(self._own_mac("ask for a passcode"), email, phone, password)
        self._expect(self._send([request])[0], ReplyKind.PASSCODE_SENT, "a passcode request")

    def login(self, email: str, phone: str, password: str, passcode: str) -> str:
        """Logs this device in with the mailed passcode; stores the new base
        token with the device's MAC, and returns the token."""
        mac = self._own_mac("log in")
        reply = self._send([LoginRequest(mac, email, phone, password, passcode)])[0]
        self._expect(reply, ReplyKind.LOGGED_IN, "a login")
        assert reply.token is not None
        self.store.save(StoredToken(reply.token, mac))
        log.info("logged in; the token is stored")
        return reply.token

    def request(self, request: str, *data: str) -> None:
        """Makes one request with the stored token: returns when it is
        `authorized`; renews the token on the way if it had expired."""
        self._expect(self.pipeline([(request, *data)])[0], ReplyKind.AUTHORIZED, "a token request")

    def pipeline(self, calls: Sequence[Union[Call, Request]]) -> List[Reply]:
        """Sends many requests on the connection without waiting for each
        reply, and returns the replies in the calls' order.

        A call is a REQUEST, or a tuple (REQUEST, DATA, ...), made with the
        stored token and renewed transparently; or a request object of
        `wire` (`TokenRequest` with a token of its own, `LoginRequest`,
        `PasscodeRequest`), sent and answered as it is. A refused request
        does not raise here: its reply's `check()` raises its error. What
        breaks the whole burst does: a lost connection, or a reply after
        which the server closes it (`LineTooLong`, `TooManyConnections`).
        """
        # Under the lock from the store's read on, so that a call of another
        # thread that renews the token first is seen here.
        with self._lock:
            return self._pipeline(calls)

    def _pipeline(self, calls: Sequence[Union[Call, Request]]) -> List[Reply]:
        stored: Optional[StoredToken] = None
        mac = self.mac
        if any(not isinstance(call, (PasscodeRequest, LoginRequest, TokenRequest)) for call in calls):
            stored = self.store.load()
            if stored is None:
                raise NoToken("no token stored: log in first")
            mac = mac or stored.mac
            if mac is None:
                raise NoToken("the stored token has no MAC with it: give the client the device's mac")
        requests: List[Request] = []
        own: List[bool] = []
        for call in calls:
            if isinstance(call, (PasscodeRequest, LoginRequest, TokenRequest)):
                requests.append(call)
                own.append(False)
            else:
                assert stored is not None and mac is not None
                name, *data = (call,) if isinstance(call, str) else call
                # Every field is checked here, before anything is sent.
                requests.append(TokenRequest(stored.token, mac, name, tuple(data)))
                own.append(True)
        if not requests:
            return []
        return self._send(requests, own, stored.token if stored else None, mac)

    def _own_mac(self, doing: str) -> str:
        if self.mac is None:
            raise FieldError(f"the client needs the device's MAC to {doing}: give Client(mac=...)")
        return self.mac

    @staticmethod
    def _expect(reply: Reply, kind: ReplyKind, what: str) -> None:
        reply.check()
        if reply.kind is not kind:
            raise ProtocolViolation(f"the server answered {what} with a reply meant for another request")

    def _connect(self) -> Connection:
        if self._connection is None or not self._connection.is_open:
            self._connection = Connection.open(self.host, self.port, self.timeout, self._tls, self._server_name)
        return self._connection

    def _send(
        self,
        requests: List[Request],
        own: Optional[List[bool]] = None,
        token: Optional[str] = None,
        mac: Optional[str] = None,
    ) -> List[Reply]:
        """Sends `requests` and returns their replies; those marked `own`
        are made with the stored `token` (and `mac`), and renewed."""
        own = own or [False] * len(requests)
        with self._lock:
            reused = self._connection is not None and self._connection.is_open
            connection = self._connect()
            try:
                return self._burst(_Burst(self, connection, requests, own, token, mac), reused)
            except _Stale:
                # A connection kept from an earlier call may have been closed
                # by the server meanwhile (idle_timeout, a restart). The
                # server reads nothing more from a connection it is closing,
                # so a burst that got no reply on it was not served: send
                # it again, once, on a new connection.
                log.debug("the kept connection had been closed by the server; sending again on a new one")
                return self._burst(_Burst(self, self._connect(), requests, own, token, mac), False)

    @staticmethod
    def _burst(burst: "_Burst", reused: bool) -> List[Reply]:
        connection = burst.connection
        answered = connection.replies
        try:
            return burst.run()
        except ConnectionClosed:
            connection.close()
            if reused and connection.replies == answered:
                raise _Stale() from None
            raise
        except BaseException:
            # Replies may be left unread: the connection is out of step.
            connection.close()
            raise


class _Stale(Exception):
    """The kept connection was found closed before any reply of a burst."""


class _Burst:
    """One pipelined exchange: requests out, at most `window` in flight,
    replies in, renewals stored and their requests sent again."""

    def __init__(
        self,
        client: Client,
        connection: Connection,
        requests: List[Request],
        own: List[bool],
        token: Optional[str],
        mac: Optional[str],
    ) -> None:
        self.client = client
        self.connection = connection
        self.requests = requests
        self.own = own
        # The stored token, renewed as the burst goes, and its MAC.
        self.token = token
        self.mac = mac
        self.replies: List[Optional[Reply]] = [None] * len(requests)
        # The requests still to send: index, and whether it is a retry.
        self.pending: Deque[Tuple[int, bool]] = deque((i, False) for i in range(len(requests)))
        # Sent and not yet answered: index, the stored token it carried
        # (None: not one made with the stored token), whether a retry.
        self.in_flight: Deque[Tuple[int, Optional[str], bool]] = deque()
        # The successor each token was renewed to in this burst.
        self.successors: Dict[str, str] = {}

    def run(self) -> List[Reply]:
        window = self.client.window
        while self.pending or self.in_flight:
            # Top up in batches (not a line per reply), keeping the
            # replies the server holds for us well under its max_backlog.
            if self.pending and len(self.in_flight) <= window // 2:
                lines = []
                while self.pending and len(self.in_flight) < window:
                    index, retry = self.pending.popleft()
                    request = self.requests[index]
                    carried = None
                    if self.own[index] and isinstance(request, TokenRequest) and self.token is not None:
                        carried = self.token
                        request = replace(request, token=carried)
                    lines.append(request.render())
                    self.in_flight.append((index, carried, retry))
                self.connection.send(b"".join(lines))
            reply = parse_reply(self.connection.read_line())
            index, carried, retry = self.in_flight.popleft()
            if reply.kind is ReplyKind.RENEW and carried is not None:
                assert reply.token is not None
                self._renewed(carried, reply.token)
                if not retry:
                    self.pending.append((index, True))
                    continue
            self.replies[index] = reply
            if reply.kind is ReplyKind.ERROR and reply.code in _CLOSING:
                self.connection.close()
                reply.check()
        return [r for r in self.replies if r is not None]

    def _renewed(self, old: str, new: str) -> None:
        known = self.successors.setdefault(old, new)
        if known != new:
            raise ProtocolViolation("the server renewed one token to two different tokens")
        if old == self.token:
            self.token = new
            self.client.store.save(StoredToken(new, self.mac))
            log.info("the token expired and was renewed; the new one is stored")
