//! Passwords as the store keeps them. The engine never hashes or verifies a
//! password itself: both are effects run outside it (argon2id is far too
//! slow for an event loop), and their results come back as inputs.

use crate::secret::Secret;

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
