"""Every way a call can fail, one class each, under one base class.

A reply the server sends for a refusal (`False`, `unauthorized`,
`error|<code>`) becomes the class named for it; so does a failure on this
side (a field that would break the request line, a connection that fails).
`retryable` says whether the same call may work if made again later
(docs/PROTOCOL.md, "Error codes": all the server's codes but the first two).

No message here ever holds a password, a passcode or a token.
"""

from typing import ClassVar, Dict, Optional, Type


class TokenizerAuthError(Exception):
    """The base of every error this package raises."""

    #: Whether the same call may succeed if made again later.
    retryable: ClassVar[bool] = False


class FieldError(TokenizerAuthError, ValueError):
    """A value that cannot go into a request: a `|`, a line break or other
    control character, an empty required field, a MAC that is not one.
    Refused before anything is sent."""


class NoToken(TokenizerAuthError):
    """The token store holds no token (log in first), or no MAC to send it
    with."""


class TokenFileError(TokenizerAuthError):
    """A token file that does not hold a token (and MAC) as written by this
    package or by `tokenizer-auth client`."""


class ConnectionFailed(TokenizerAuthError, OSError):
    """The server could not be reached, or the connection broke or timed out
    before the reply. Also an `OSError`, as the socket errors the old
    `TcpAuth` let through were."""

    retryable = True


class ConnectionClosed(ConnectionFailed):
    """The server closed the connection without (all) the replies."""


class TlsError(ConnectionFailed):
    """TLS failed: the certificate is untrusted, expired or names another
    host, or the server does not speak TLS. Nothing was sent."""

    retryable = False


class ProtocolViolation(TokenizerAuthError):
    """A reply that is not one the native protocol has for the request: not
    UTF-8, too long, unknown, or two different successors for one token."""


class CredentialsRejected(TokenizerAuthError):
    """`False`: a credential failure (unknown email, wrong password or phone,
    wrong, expired or spent passcode). The server never says which."""


class Unauthorized(TokenizerAuthError):
    """`unauthorized`: the token is unknown, bound to another MAC or IP,
    rotated away, or its session is past its absolute age. Log in again."""


class TokenRenewedAgain(TokenizerAuthError):
    """A request retried with a renewed token was told to renew again (a
    token lifetime shorter than a round trip). The newest token is stored;
    calling again uses it."""

    retryable = True


class ServerError(TokenizerAuthError):
    """`error|<code>`: the request was not served, for a reason that is not
    a credential failure. Each code has its subclass; a code this version
    does not know is raised as this class, with its `code`."""

    #: The code's wire text, e.g. "rate_limited".
    code: str = ""
    meaning: ClassVar[str] = "an error this client version does not know"

    def __init__(self, code: Optional[str] = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(f"the server replied error|{self.code}: {self.meaning}")


class Malformed(ServerError):
    code = "malformed"
    meaning = "the request line is not one of the protocol"


class LineTooLong(ServerError):
    code = "line_too_long"
    meaning = "the request line is longer than the server's max_line; it closed the connection"


class RateLimited(ServerError):
    code = "rate_limited"
    meaning = "too many passcode requests or failures for this email or address; retry after the window"
    retryable = True


class Busy(ServerError):
    code = "busy"
    meaning = "the server has too many password checks queued; retry shortly"
    retryable = True


class StoreUnavailable(ServerError):
    code = "store_unavailable"
    meaning = "the server's store could not read or commit; retry"
    retryable = True


class MailUnavailable(ServerError):
    code = "mail_unavailable"
    meaning = "the mail relay is down or refused the message; no passcode was issued; retry"
    retryable = True


class TooManyConnections(ServerError):
    code = "too_many_connections"
    meaning = "the server is at its connection limit; retry later"
    retryable = True


#: The class of each code of docs/PROTOCOL.md, "Error codes".
ERRORS_BY_CODE: Dict[str, Type[ServerError]] = {
    cls.code: cls
    for cls in (Malformed, LineTooLong, RateLimited, Busy, StoreUnavailable, MailUnavailable, TooManyConnections)
}


def server_error(code: str) -> ServerError:
    """The exception for `error|<code>`."""
    cls = ERRORS_BY_CODE.get(code)
    return cls() if cls is not None else ServerError(code)
