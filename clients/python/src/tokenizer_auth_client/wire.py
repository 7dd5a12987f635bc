"""The native protocol's text (docs/PROTOCOL.md): the three requests,
rendered from checked fields, and the replies, parsed. Every protocol
string of this package is in this module.

    require_passcode|MAC|PASSWORD|PHONE|EMAIL   ->  Passcode is sent
    MAC|EMAIL|PHONE|PASSWORD|PASSCODE           ->  <LOGIN_PREFIX><token>
    TOKEN|MAC|REQUEST[|DATA...]                 ->  authorized | renew|<token>
    any of them                                 ->  False | unauthorized | error|<code>

A field may not hold `|` (it would split the field) nor a control character
(CR or LF would end the line early; the server refuses the others as
malformed): such a value is refused here, with `FieldError`, before anything
is sent. Lengths are left to the server, whose limits are its configuration.
"""

import enum
import re
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

from .errors import (
    CredentialsRejected,
    FieldError,
    ProtocolViolation,
    TokenizerAuthError,
    TokenRenewedAgain,
    Unauthorized,
    server_error,
)

#: The prefix of a successful login reply, before the base token
#: (`𝔄𝔴𝔣𝔢𝔯_𝔥𝔢𝔩𝔩𝔴𝔞𝔩𝔩_`, 54 bytes of UTF-8), kept from the old server.
LOGIN_PREFIX = (
    "\U0001d504\U0001d534\U0001d523\U0001d522\U0001d52f_"
    "\U0001d525\U0001d522\U0001d529\U0001d529\U0001d534\U0001d51e\U0001d529\U0001d529_"
)
PASSCODE_SENT = "Passcode is sent"
FALSE = "False"
AUTHORIZED = "authorized"
UNAUTHORIZED = "unauthorized"
RENEW = "renew|"
ERROR = "error|"
REQUIRE_PASSCODE = "require_passcode"

#: The longest reply line read. Real replies are under 200 bytes; the cap
#: keeps a broken or hostile peer from growing memory without bound.
MAX_REPLY = 64 * 1024

# Unicode's control characters (category Cc), which the server refuses.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# Six hex pairs with one separator throughout, or twelve bare hex digits,
# as the server parses a MAC (engine/src/device.rs).
_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}|[0-9A-Fa-f]{12}")
_TOKEN = re.compile(r"[0-9A-Fa-f]{64}")
# A token as the server sends it.
_REPLY_TOKEN = re.compile(r"[0-9a-f]{64}")
_ERROR_CODE = re.compile(r"[a-z0-9_]{1,64}")


def check_field(name: str, value: str, required: bool = True) -> str:
    """`value` if it can be a field of a request line; else `FieldError`,
    naming the field but never repeating its value (it may be a secret)."""
    if not isinstance(value, str):
        raise FieldError(f"the {name} must be a str, not {type(value).__name__}")
    if "|" in value:
        raise FieldError(f"the {name} cannot hold '|' (it separates the fields)")
    if _CONTROL.search(value):
        raise FieldError(f"the {name} cannot hold a line break or other control character")
    if required and not value:
        raise FieldError(f"the {name} is empty")
    return value


def check_mac(mac: str) -> str:
    """`mac` as given if it is a MAC address the server accepts
    (`aa:bb:cc:dd:ee:ff`, `AA-BB-CC-DD-EE-FF`, `aabbccddeeff`); the server
    normalizes it."""
    check_field("MAC", mac)
    if not _MAC.fullmatch(mac):
        raise FieldError(
            "the MAC is not a MAC address: six hex pairs separated by ':' or '-', or twelve hex digits"
        )
    return mac


def check_token(token: str) -> str:
    """`token` if it is a base token: 64 hex digits."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise FieldError("the token is not 64 hex digits")
    return token


@dataclass(frozen=True)
class PasscodeRequest:
    """`require_passcode|MAC|PASSWORD|PHONE|EMAIL`: mail a passcode."""

    mac: str
    email: str
    phone: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        check_mac(self.mac)
        check_field("email", self.email)
        check_field("phone", self.phone, required=False)
        check_field("password", self.password)

    def render(self) -> bytes:
        """The request line, LF included."""
        return f"{REQUIRE_PASSCODE}|{self.mac}|{self.password}|{self.phone}|{self.email}\n".encode()


@dataclass(frozen=True)
class LoginRequest:
    """`MAC|EMAIL|PHONE|PASSWORD|PASSCODE`: log in with a mailed passcode."""

    mac: str
    email: str
    phone: str
    password: str = field(repr=False)
    passcode: str = field(repr=False)

    def __post_init__(self) -> None:
        check_mac(self.mac)
        check_field("email", self.email)
        # An email spelled `require_passcode` would make the line a passcode
        # request; no real address is spelled so.
        if self.email == REQUIRE_PASSCODE:
            raise FieldError(f"the email cannot be {REQUIRE_PASSCODE!r}")
        check_field("phone", self.phone, required=False)
        check_field("password", self.password)
        check_field("passcode", self.passcode)

    def render(self) -> bytes:
        """The request line, LF included."""
        return f"{self.mac}|{self.email}|{self.phone}|{self.password}|{self.passcode}\n".encode()


@dataclass(frozen=True)
class TokenRequest:
    """`TOKEN|MAC|REQUEST[|DATA...]`: a request made with a token. The server
    answers whether the token is good; REQUEST and DATA are the device's
    own, opaque to it."""

    token: str = field(repr=False)
    mac: str
    request: str
    data: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_token(self.token)
        check_mac(self.mac)
        check_field("request", self.request)
        if not isinstance(self.data, tuple):
            raise FieldError("the data must be a tuple of str")
        for item in self.data:
            check_field("data", item, required=False)

    def render(self) -> bytes:
        """The request line, LF included."""
        return "|".join((self.token, self.mac, self.request) + self.data).encode() + b"\n"


Request = Union[PasscodeRequest, LoginRequest, TokenRequest]


class ReplyKind(enum.Enum):
    PASSCODE_SENT = "passcode sent"
    LOGGED_IN = "logged in"
    FALSE = "False"
    AUTHORIZED = "authorized"
    RENEW = "renew"
    UNAUTHORIZED = "unauthorized"
    ERROR = "error"


@dataclass(frozen=True)
class Reply:
    """One reply line, parsed. `token` is set for LOGGED_IN and RENEW,
    `code` for ERROR."""

    kind: ReplyKind
    token: Optional[str] = field(default=None, repr=False)
    code: Optional[str] = None

    @property
    def ok(self) -> bool:
        """Whether the request was served."""
        return self.kind in (ReplyKind.PASSCODE_SENT, ReplyKind.LOGGED_IN, ReplyKind.AUTHORIZED)

    def error(self) -> Optional[TokenizerAuthError]:
        """The exception this reply stands for, or None if it is not a
        refusal. A RENEW that reaches a caller is one the client already
        retried once: `TokenRenewedAgain`."""
        if self.kind is ReplyKind.FALSE:
            return CredentialsRejected("the server replied False: the credentials were refused")
        if self.kind is ReplyKind.UNAUTHORIZED:
            return Unauthorized("the server replied unauthorized: log in again")
        if self.kind is ReplyKind.ERROR:
            return server_error(self.code or "")
        if self.kind is ReplyKind.RENEW:
            return TokenRenewedAgain("the token was renewed again on the retry; the newest one is stored")
        return None

    def check(self) -> "Reply":
        """This reply, or its exception raised."""
        error = self.error()
        if error is not None:
            raise error
        return self

    def text(self) -> str:
        """The reply's line, as the server wrote it (no LF)."""
        if self.kind is ReplyKind.PASSCODE_SENT:
            return PASSCODE_SENT
        if self.kind is ReplyKind.LOGGED_IN:
            return LOGIN_PREFIX + (self.token or "")
        if self.kind is ReplyKind.FALSE:
            return FALSE
        if self.kind is ReplyKind.AUTHORIZED:
            return AUTHORIZED
        if self.kind is ReplyKind.RENEW:
            return RENEW + (self.token or "")
        if self.kind is ReplyKind.UNAUTHORIZED:
            return UNAUTHORIZED
        return ERROR + (self.code or "")


_FIXED = {
    PASSCODE_SENT: ReplyKind.PASSCODE_SENT,
    FALSE: ReplyKind.FALSE,
    AUTHORIZED: ReplyKind.AUTHORIZED,
    UNAUTHORIZED: ReplyKind.UNAUTHORIZED,
}


def parse_reply(line: bytes) -> Reply:
    """Parses one reply line (its LF, and a CR before it, removed).
    Anything the protocol does not have is `ProtocolViolation`, whose
    message does not repeat the line (it could hold a token)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        if line.startswith(b"\x80"):
            # Pickle's first byte: the old server's ports answer so.
            raise ProtocolViolation("the reply is a pickle: is this a legacy port, not the native one?") from None
        raise ProtocolViolation(f"a reply of {len(line)} bytes that is not UTF-8") from None
    kind = _FIXED.get(text)
    if kind is not None:
        return Reply(kind)
    if text.startswith(LOGIN_PREFIX) and _REPLY_TOKEN.fullmatch(text[len(LOGIN_PREFIX):]):
        return Reply(ReplyKind.LOGGED_IN, token=text[len(LOGIN_PREFIX):])
    if text.startswith(RENEW) and _REPLY_TOKEN.fullmatch(text[len(RENEW):]):
        return Reply(ReplyKind.RENEW, token=text[len(RENEW):])
    if text.startswith(ERROR) and _ERROR_CODE.fullmatch(text[len(ERROR):]):
        return Reply(ReplyKind.ERROR, code=text[len(ERROR):])
    raise ProtocolViolation(f"a reply of {len(line)} bytes that is not one of the native protocol")
