"""`TcpAuth`: the old devices' client class, on the native protocol.

The old devices import `TcpAuth` from the old project's `tcp_auth.py` and
call `require_passcode(email, phone, password)`, then
`get_initial_token(email, phone, password, passcode)`. That class spoke the
legacy ports (7158 for passcodes, 7159 for logins: one request per
connection, a pickled string back) and returned the unpickled strings. This
one has the same method names and returns the same strings, but speaks the
native protocol, with TLS when asked, so an old device moves with one
import:

    from tokenizer_auth_client import TcpAuth      # was: from tcp_auth import TcpAuth

The old constructor is not part of this repository; this one takes the
server's host and native port, and the device's MAC, which defaults to this
machine's own in the form the old clients sent (`aa:bb:cc:dd:ee:ff`).
"""

import logging
import ssl
import uuid
from typing import Optional, Union

from .client import Client
from .errors import CredentialsRejected, FieldError, ServerError
from .store import TokenStore
from .wire import FALSE, LOGIN_PREFIX, PASSCODE_SENT, check_mac

log = logging.getLogger("tokenizer_auth_client")


def device_mac() -> str:
    """This machine's MAC address, lowercase with `:`, as the old clients
    sent it. Where none can be read Python makes one up at random for each
    process, which would bind every login to a MAC the device never shows
    again: that is refused."""
    node = uuid.getnode()
    if node >> 40 & 1:
        # The multicast bit marks uuid's random stand-in.
        raise FieldError("this machine's MAC address cannot be read: give TcpAuth(mac=...)")
    digits = f"{node:012x}"
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


class TcpAuth:
    """The old client's calls and return values, on the native protocol.

    `host` and `port` name the native listener (7160 by default, not the old
    7158 and 7159); `mac` is the device's (default: `device_mac()`). `tls`,
    `cafile`, `server_name` and `timeout` are `Client`'s. `store`, if given,
    keeps the token of a login (a `FileTokenStore` lets a `Client` make the
    device's requests with it).

    Like the old server's ports, every refusal is the string `'False'`: a
    credential failure, and also each `error|<code>` (the legacy ports send
    those as `False`) and a value that cannot be sent (the legacy port
    answers it `False`). A connection that fails raises `ConnectionFailed`,
    an `OSError` as the old client's socket errors were.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7160,
        mac: Optional[str] = None,
        *,
        tls: Union[bool, ssl.SSLContext] = False,
        cafile: Optional[str] = None,
        server_name: Optional[str] = None,
        timeout: float = 30.0,
        store: Optional[TokenStore] = None,
    ) -> None:
        self.host = host
        self.port = port
        self.mac = check_mac(mac) if mac is not None else device_mac()
        self.timeout = timeout
        self.store = store
        self._tls = tls
        self._cafile = cafile
        self._server_name = server_name

    def require_passcode(self, email: str, phone: str, password: str) -> str:
        """`'Passcode is sent'`, or `'False'`."""
        try:
            with self._client() as client:
                client.request_passcode(email, phone, password)
        except (CredentialsRejected, ServerError, FieldError) as e:
            return _false(e)
        return PASSCODE_SENT

    def get_initial_token(self, email: str, phone: str, password: str, passcode: str) -> str:
        """The login reply, the old server's prefix and the base token
        (`'𝔄𝔴𝔣𝔢𝔯_𝔥𝔢𝔩𝔩𝔴𝔞𝔩𝔩_<64 hex digits>'`), or `'False'`."""
        try:
            with self._client() as client:
                token = client.login(email, phone, password, passcode)
        except (CredentialsRejected, ServerError, FieldError) as e:
            return _false(e)
        return LOGIN_PREFIX + token

    def _client(self) -> Client:
        # One connection per call, as the old client had.
        return Client(
            self.host,
            self.port,
            mac=self.mac,
            store=self.store,
            tls=self._tls,
            cafile=self._cafile,
            server_name=self._server_name,
            timeout=self.timeout,
        )


def _false(e: Exception) -> str:
    # The reason is logged (never a secret: the messages hold none), since
    # the old return value cannot carry it.
    log.info("refused: %s", e)
    return FALSE
