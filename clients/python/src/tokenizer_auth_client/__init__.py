"""A client for tokenizer-auth's native protocol (docs/PROTOCOL.md), for
the devices: ask for a passcode, log in, make requests with the session
token, which is renewed transparently when it expires; plaintext or TLS.

    from tokenizer_auth_client import Client, FileTokenStore

    client = Client("auth.example.com", tls=True, mac="aa:bb:cc:dd:ee:ff",
                    store=FileTokenStore("~/.tokenizer-auth-token"))
    client.request_passcode("ada@example.com", "555-0100", password)
    client.login("ada@example.com", "555-0100", password, input("Passcode: "))
    client.request("status")

`TcpAuth` is the old devices' class, with its method names and return
values, on the native protocol.
"""

import logging

from .client import Call, Client
from .connection import tls_context
from .errors import (
    Busy,
    ConnectionClosed,
    ConnectionFailed,
    CredentialsRejected,
    FieldError,
    LineTooLong,
    MailUnavailable,
    Malformed,
    NoToken,
    ProtocolViolation,
    RateLimited,
    ServerError,
    StoreUnavailable,
    TlsError,
    TokenFileError,
    TokenizerAuthError,
    TokenRenewedAgain,
    TooManyConnections,
    Unauthorized,
)
from .store import FileTokenStore, MemoryTokenStore, StoredToken, TokenStore
from .tcp_auth import TcpAuth, device_mac
from .wire import LOGIN_PREFIX, LoginRequest, PasscodeRequest, Reply, ReplyKind, TokenRequest

__version__ = "0.1.0"

__all__ = [
    "Busy",
    "Call",
    "Client",
    "ConnectionClosed",
    "ConnectionFailed",
    "CredentialsRejected",
    "FieldError",
    "FileTokenStore",
    "LOGIN_PREFIX",
    "LineTooLong",
    "LoginRequest",
    "MailUnavailable",
    "Malformed",
    "MemoryTokenStore",
    "NoToken",
    "PasscodeRequest",
    "ProtocolViolation",
    "RateLimited",
    "Reply",
    "ReplyKind",
    "ServerError",
    "StoreUnavailable",
    "StoredToken",
    "TcpAuth",
    "TlsError",
    "TokenFileError",
    "TokenRenewedAgain",
    "TokenRequest",
    "TokenStore",
    "TokenizerAuthError",
    "TooManyConnections",
    "Unauthorized",
    "device_mac",
    "tls_context",
]

# A library logs nothing unless its application configures logging.
logging.getLogger("tokenizer_auth_client").addHandler(logging.NullHandler())
