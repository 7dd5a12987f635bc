//! The passcode mail. The body names the account and the passcode, so a
//! person reading the outbox (or their inbox) knows what it is for.

use chrono::{DateTime, Utc};

use crate::effect::Mail;
use crate::passcode::Passcode;
use crate::secret::Secret;

/// Subject line of every passcode mail.
pub const SUBJECT: &str = "Your tokenizer-auth passcode";

/// The mail that carries `passcode` to `email`.
pub(crate) fn passcode_mail(email: &str, passcode: &Passcode, expires_at: DateTime<Utc>) -> Mail {
    let body = format!(
        "Your passcode for {email} is: {code}\r\n\r\n\
         It works once, on the device that asked for it, until {expiry} UTC.\r\n\
         If you did not ask for it, someone knows your password: change it.\r\n",
        code = passcode.expose(),
        expiry = expires_at.format("%Y-%m-%d %H:%M:%S"),
    );
    Mail { to: email.to_owned(), subject: SUBJECT.to_owned(), body: Secret::new(body), expires_at }
}

/// Finds the passcode in a mail body written by the engine (`passcode_mail`); for
/// tests and tools that read the outbox.
pub fn find_passcode(body: &str) -> Option<&str> {
    let (_, rest) = body.split_once(" is: ")?;
    rest.get(..crate::passcode::LENGTH)
}
