"""The protocol text without a server: requests rendered from checked
fields, replies parsed, each reply's exception. (The replies are also met
from the real server in the other tests; this covers every code, including
those no configuration provokes on demand.)"""

import unittest

import support  # noqa: F401  (puts the package under test on sys.path)

from tokenizer_auth_client import errors
from tokenizer_auth_client.wire import (
    LOGIN_PREFIX,
    LoginRequest,
    PasscodeRequest,
    Reply,
    ReplyKind,
    TokenRequest,
    parse_reply,
)

TOKEN = "0123456789abcdef" * 4
MAC = support.MAC


class Requests(unittest.TestCase):
    def test_render_each_request_as_the_protocol_writes_it(self) -> None:
        self.assertEqual(
            PasscodeRequest(MAC, "ada@example.com", "555", "pw").render(),
            b"require_passcode|aa:bb:cc:dd:ee:ff|pw|555|ada@example.com\n",
        )
        self.assertEqual(
            LoginRequest(MAC, "ada@example.com", "", "pw", "AB12CD").render(),
            b"aa:bb:cc:dd:ee:ff|ada@example.com||pw|AB12CD\n",
        )
        self.assertEqual(TokenRequest(TOKEN, MAC, "status").render(), f"{TOKEN}|{MAC}|status\n".encode())
        self.assertEqual(
            TokenRequest(TOKEN, MAC, "put", ("a", "", "c")).render(), f"{TOKEN}|{MAC}|put|a||c\n".encode()
        )

    def test_fields_that_would_break_the_line_are_refused_without_their_value(self) -> None:
        secret = "hunter2"
        for bad in (f"{secret}|x", f"{secret}\n", f"{secret}\r", f"{secret}\x00", f"{secret}\x85"):
            with self.assertRaises(errors.FieldError) as caught:
                PasscodeRequest(MAC, "ada@example.com", "", bad)
            self.assertIn("password", str(caught.exception))
            self.assertNotIn(secret, str(caught.exception))
        with self.assertRaises(errors.FieldError):
            LoginRequest(MAC, "ada@example.com", "", "pw", "")  # empty passcode
        with self.assertRaises(errors.FieldError):
            LoginRequest(MAC, "a\nb@example.com", "", "pw", "X")
        with self.assertRaises(errors.FieldError):
            TokenRequest(TOKEN, MAC, "status", ("a|b",))
        with self.assertRaises(errors.FieldError):
            TokenRequest(TOKEN, MAC, "")
        with self.assertRaises(errors.FieldError):
            TokenRequest("ab" * 31, MAC, "status")
        self.assertTrue(issubclass(errors.FieldError, ValueError))

    def test_macs_in_the_spellings_the_server_takes(self) -> None:
        for good in ("aa:bb:cc:dd:ee:ff", "AA-BB-CC-DD-EE-FF", "aabbccddeeff", "Aa:bB:cc:dd:ee:ff"):
            PasscodeRequest(good, "ada@example.com", "", "pw")
        bad_macs = ("aa:bb:cc:dd:ee", "aa:bb-cc:dd:ee:ff", "aa:bb:cc:dd:ee:fg", "aabbccddeeff0", "", f"{MAC}\n")
        for bad in bad_macs:
            with self.assertRaises(errors.FieldError, msg=bad):
                PasscodeRequest(bad, "ada@example.com", "", "pw")

    def test_secrets_stay_out_of_repr(self) -> None:
        text = repr(LoginRequest(MAC, "ada@example.com", "", "hunter2", "AB12CD")) + repr(
            TokenRequest(TOKEN, MAC, "status")
        ) + repr(Reply(ReplyKind.RENEW, token=TOKEN))
        for secret in ("hunter2", "AB12CD", TOKEN):
            self.assertNotIn(secret, text)


class Replies(unittest.TestCase):
    def test_every_reply_parses_and_renders_back(self) -> None:
        cases = {
            "Passcode is sent": Reply(ReplyKind.PASSCODE_SENT),
            LOGIN_PREFIX + TOKEN: Reply(ReplyKind.LOGGED_IN, token=TOKEN),
            "False": Reply(ReplyKind.FALSE),
            "authorized": Reply(ReplyKind.AUTHORIZED),
            "renew|" + TOKEN: Reply(ReplyKind.RENEW, token=TOKEN),
            "unauthorized": Reply(ReplyKind.UNAUTHORIZED),
            "error|busy": Reply(ReplyKind.ERROR, code="busy"),
        }
        for text, reply in cases.items():
            self.assertEqual(parse_reply(text.encode()), reply)
            self.assertEqual(reply.text(), text)
        self.assertEqual(len(LOGIN_PREFIX.encode()), 54)

    def test_every_error_code_is_its_own_exception(self) -> None:
        expected = {
            "malformed": (errors.Malformed, False),
            "line_too_long": (errors.LineTooLong, False),
            "rate_limited": (errors.RateLimited, True),
            "busy": (errors.Busy, True),
            "store_unavailable": (errors.StoreUnavailable, True),
            "mail_unavailable": (errors.MailUnavailable, True),
            "too_many_connections": (errors.TooManyConnections, True),
        }
        self.assertEqual(set(expected), set(errors.ERRORS_BY_CODE))
        for code, (cls, retryable) in expected.items():
            with self.assertRaises(cls) as caught:
                parse_reply(f"error|{code}".encode()).check()
            self.assertEqual(caught.exception.code, code)
            self.assertIs(caught.exception.retryable, retryable)
            self.assertIsInstance(caught.exception, errors.ServerError)
            self.assertIsInstance(caught.exception, errors.TokenizerAuthError)
        # A code a later server may add still surfaces, as the base class.
        with self.assertRaises(errors.ServerError) as caught:
            parse_reply(b"error|something_new").check()
        self.assertEqual(caught.exception.code, "something_new")
        self.assertIs(type(caught.exception), errors.ServerError)

    def test_refusals_raise_and_successes_pass(self) -> None:
        self.assertRaises(errors.CredentialsRejected, parse_reply(b"False").check)
        self.assertRaises(errors.Unauthorized, parse_reply(b"unauthorized").check)
        self.assertRaises(errors.TokenRenewedAgain, parse_reply(f"renew|{TOKEN}".encode()).check)
        for ok in (b"authorized", b"Passcode is sent", (LOGIN_PREFIX + TOKEN).encode()):
            self.assertTrue(parse_reply(ok).check().ok)

    def test_what_the_protocol_does_not_have_is_a_violation_that_does_not_repeat_it(self) -> None:
        pickled_false = b"\x80\x04\x95\t\x00\x00\x00\x00\x00\x00\x00\x8c\x05False\x94."
        for bad in (b"", b"authorised", b"renew|" + TOKEN.upper().encode(), b"renew|abc",
                    (LOGIN_PREFIX + TOKEN[:10]).encode(), b"error|", b"error|Bad Code", b"\xff\xfe", pickled_false,
                    f"renew|{TOKEN}|extra".encode()):
            with self.assertRaises(errors.ProtocolViolation, msg=bad) as caught:
                parse_reply(bad)
            self.assertNotIn(TOKEN[:10], str(caught.exception))
        with self.assertRaises(errors.ProtocolViolation) as caught:
            parse_reply(pickled_false)
        self.assertIn("legacy port", str(caught.exception))


class Exceptions(unittest.TestCase):
    def test_connection_failures_are_os_errors_too(self) -> None:
        for cls in (errors.ConnectionFailed, errors.ConnectionClosed, errors.TlsError):
            self.assertTrue(issubclass(cls, OSError))
            self.assertTrue(issubclass(cls, errors.TokenizerAuthError))
        self.assertTrue(errors.ConnectionFailed.retryable)
        self.assertFalse(errors.TlsError.retryable)


if __name__ == "__main__":
    unittest.main()
