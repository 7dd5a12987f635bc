//! Passwords as the store keeps them. The engine never hashes or verifies a
//! password itself: both are effects run outside it (argon2id is far too
//! slow for an event loop), and their results come back as inputs.

use crate::codec::request::longest_password;
use crate::secret::Secret;

/// The shortest password the admin commands take by default: 8
/// characters, the floor NIST SP 800-63B sets for a password used with a
/// second factor (here, the mailed passcode).
pub const DEFAULT_MIN_PASSWORD_LENGTH: usize = 8;

/// What a new password (`user add`, `user passwd`) must be
/// (docs/SECURITY.md, "Accounts made by the admin commands"): at least
/// `min_chars` characters, not only whitespace, and short enough, without
/// `|` or control characters, that a request line can carry it. Nothing
/// else: no composition rules (NIST SP 800-63B).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NewPasswordRule {
    /// The fewest characters (`min_password_length`).
    pub min_chars: usize,
    /// The most bytes a request line can carry for this account.
    pub max_bytes: usize,
}

impl NewPasswordRule {
    /// The rule for the account (`email`, `phone`) on a server whose lines
    /// are at most `max_line` bytes.
    pub fn for_account(min_chars: usize, max_line: usize, email: &str, phone: &str) -> NewPasswordRule {
        NewPasswordRule { min_chars, max_bytes: longest_password(max_line, email, phone) }
    }

    /// Whether `password` may be set, or why not (never echoing it).
    pub fn check(&self, password: &str) -> Result<(), String> {
        if password.is_empty() {
            return Err("the password is empty".to_owned());
        }
        if password.contains('|') || password.chars().any(char::is_control) {
            return Err("a password cannot hold | or control characters (the protocol could not carry it)".to_owned());
        }
        if password.chars().all(char::is_whitespace) {
            return Err("the password is only whitespace".to_owned());
        }
        let chars = password.chars().count();
        if chars < self.min_chars {
            return Err(format!(
                "the password has {chars} characters; at least {} are needed (min_password_length)",
                self.min_chars
            ));
        }
        if password.len() > self.max_bytes {
            return Err(format!(
                "the password is {} bytes; a request line (max_line) can carry at most {} for this account",
                password.len(),
                self.max_bytes
            ));
        }
        Ok(())
    }
}

/// A stored password.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PasswordHash {
    /// A PHC string (`$argon2id$v=19$m=...`), what this server writes.
    Phc(String),
    /// A plaintext password left by the old server. It is verified once and
    /// replaced by a PHC string on that success.
    Plain(Secret),
}

impl PasswordHash {
    /// Reads a `password` column: PHC strings start with `$argon2`; anything
    /// else is the old server's plaintext.
    pub fn from_column(text: &str) -> PasswordHash {
        if text.starts_with("$argon2") {
            PasswordHash::Phc(text.to_owned())
        } else {
            PasswordHash::Plain(Secret::new(text))
        }
    }

    /// The column text.
    pub fn as_column(&self) -> &str {
        match self {
            PasswordHash::Phc(phc) => phc,
            PasswordHash::Plain(plain) => plain.expose(),
        }
    }

    /// Whether a successful verification should replace it with a new hash.
    pub fn needs_upgrade(&self) -> bool {
        matches!(self, PasswordHash::Plain(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_passwords_are_checked() {
        let rule = NewPasswordRule::for_account(8, 4096, "ada@example.com", "555");
        assert_eq!(rule.max_bytes, 4096 - "require_passcode|aa:bb:cc:dd:ee:ff||555|ada@example.com".len());
        assert!(rule.check("correct horse").is_ok());
        assert!(rule.check("pässwörd").is_ok(), "8 characters, 10 bytes");
        assert!(rule.check("1234567").unwrap_err().contains("at least 8"));
        assert!(rule.check("        ").unwrap_err().contains("only whitespace"));
        assert!(rule.check(" \u{3000}\t x").is_err());
        assert!(rule.check("").unwrap_err().contains("empty"));
        assert!(rule.check("pass|word").unwrap_err().contains('|'));
        assert!(rule.check("pass\u{0}word").unwrap_err().contains("control"));
        assert!(rule.check(&"x".repeat(rule.max_bytes)).is_ok());
        let error = rule.check(&"x".repeat(rule.max_bytes + 1)).unwrap_err();
        assert!(error.contains("at most") && !error.contains("xxxx"), "{error}");
        assert!(rule.check(&"x".repeat(1 << 20)).is_err(), "a megabyte");
    }

    #[test]
    fn columns_are_told_apart() {
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
        assert_eq!(PasswordHash::from_column(phc), PasswordHash::Phc(phc.into()));
        assert!(!PasswordHash::from_column(phc).needs_upgrade());
        let plain = PasswordHash::from_column("hunter2");
        assert!(plain.needs_upgrade());
        assert_eq!(plain.as_column(), "hunter2");
        assert_eq!(format!("{plain:?}"), "Plain([redacted])");
    }
}
