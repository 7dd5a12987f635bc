//! The passcode rules, all in one place: what a passcode looks like, how it
//! is stored (only as a salted digest), when it is still usable (unexpired,
//! fewer than the allowed wrong guesses) and what a failed login does to it.

use core::fmt;
use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::device::Mac;
use crate::hex;
use crate::secret::Secret;

/// Characters a passcode is made of.
pub const ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// Characters in a passcode.
pub const LENGTH: usize = 6;

/// A one-time passcode as mailed to the user. Only [`crate::random`] makes
/// new ones.
#[derive(Clone, PartialEq, Eq)]
pub struct Passcode(Secret);

impl Passcode {
    pub(crate) fn from_generated(code: String) -> Passcode {
        Passcode(Secret::new(code))
    }

    /// The passcode text, for the mail body.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for Passcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passcode([redacted])")
    }
}

/// A passcode as the store keeps it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum StoredPasscode {
    /// `sha256(salt ‖ passcode)` with a per-passcode salt: what this server
    /// writes.
    Digest {
        /// Random salt drawn with the passcode.
        salt: [u8; 16],
        /// The digest.
        hash: [u8; 32],
    },
    /// A plaintext passcode written by the old server; still honoured until
    /// it expires, never written.
    Plain(Secret),
}

const DIGEST_TAG: &str = "sha256$";

impl StoredPasscode {
    /// Seals a fresh passcode for storage.
    pub fn seal(passcode: &Passcode, salt: [u8; 16]) -> StoredPasscode {
        StoredPasscode::Digest { salt, hash: digest(&salt, passcode.expose().as_bytes()) }
    }

    /// This passcode as a digest: an old server's plaintext is sealed with
    /// `salt`, a digest is returned as it is.
    pub fn sealed(&self, salt: [u8; 16]) -> StoredPasscode {
        match self {
            StoredPasscode::Digest { .. } => self.clone(),
            StoredPasscode::Plain(plain) => {
                StoredPasscode::Digest { salt, hash: digest(&salt, plain.expose().as_bytes()) }
            }
        }
    }

    /// Whether `candidate` is this passcode, in constant time.
    pub fn matches(&self, candidate: &str) -> bool {
        match self {
            StoredPasscode::Digest { salt, hash } => digest(salt, candidate.as_bytes()).ct_eq(hash).into(),
            StoredPasscode::Plain(plain) => plain.expose().as_bytes().ct_eq(candidate.as_bytes()).into(),
        }
    }

    /// The column text: `sha256$<salt hex>$<digest hex>`, or the old
    /// server's plaintext.
    pub fn to_column(&self) -> String {
        match self {
            StoredPasscode::Digest { salt, hash } => {
                let mut out = String::with_capacity(DIGEST_TAG.len() + 32 + 1 + 64);
                out.push_str(DIGEST_TAG);
                hex::push(&mut out, salt);
                out.push('$');
                hex::push(&mut out, hash);
                out
            }
            StoredPasscode::Plain(plain) => plain.expose().to_owned(),
        }
    }

    /// Reads the column text back. Anything that is not a digest is the old
    /// server's plaintext.
    pub fn from_column(text: &str) -> StoredPasscode {
        let parsed = text.strip_prefix(DIGEST_TAG).and_then(|rest| {
            let (salt, hash) = rest.split_once('$')?;
            let salt: [u8; 16] = hex::decode(salt)?.try_into().ok()?;
            let hash = hex::decode32(hash.as_bytes())?;
            Some(StoredPasscode::Digest { salt, hash })
        });
        parsed.unwrap_or_else(|| StoredPasscode::Plain(Secret::new(text)))
    }
}

fn digest(salt: &[u8; 16], code: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(code);
    h.finalize().into()
}

/// Which passcode a login may use: the one issued to this email on this
/// device (MAC) from this address (IP).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PasscodeKey {
    /// The account.
    pub email: String,
    /// The device's MAC, normalized.
    pub mac: Mac,
    /// The client's IP, normalized.
    pub ip: IpAddr,
}

/// A stored passcode.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PasscodeRecord {
    /// Whom and where it was issued to.
    pub key: PasscodeKey,
    /// The phone given with the request (kept as the old table did).
    pub phone: String,
    /// The passcode, sealed.
    pub code: StoredPasscode,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// Failed logins made against it so far.
    pub attempts: u32,
}

/// How passcodes are issued and how many guesses one survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasscodePolicy {
    /// How long a passcode works.
    pub lifetime: TimeDelta,
    /// Failed logins after which a passcode is void.
    pub max_guesses: u32,
}

impl Default for PasscodePolicy {
    fn default() -> Self {
        PasscodePolicy { lifetime: TimeDelta::minutes(3), max_guesses: 5 }
    }
}

impl PasscodePolicy {
    /// The record for a passcode issued now.
    pub(crate) fn issue(
        &self,
        key: PasscodeKey,
        phone: &str,
        code: StoredPasscode,
        now: DateTime<Utc>,
    ) -> PasscodeRecord {
        PasscodeRecord { key, phone: phone.to_owned(), code, expires_at: now + self.lifetime, attempts: 0 }
    }

    /// Whether `candidate` logs in with `record` at `now`. The digest is
    /// compared even when the record is spent, so the work done does not
    /// depend on the record's state.
    pub(crate) fn accepts(&self, record: &PasscodeRecord, candidate: &str, now: DateTime<Utc>) -> bool {
        let matches = record.code.matches(candidate);
        matches && now < record.expires_at && record.attempts < self.max_guesses
    }

    /// Whether a guess against `record` may still be counted at `now`: it
    /// has not expired and has guesses left. A login reserves its guess
    /// (one more counted attempt) before it is compared, so at most
    /// `max_guesses` guesses are ever compared, however many race.
    pub(crate) fn guessable(&self, record: &PasscodeRecord, now: DateTime<Utc>) -> bool {
        now < record.expires_at && record.attempts < self.max_guesses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(code: StoredPasscode) -> PasscodeRecord {
        let now = DateTime::<Utc>::UNIX_EPOCH;
        PasscodeRecord {
            key: PasscodeKey {
                email: "a@b.c".into(),
                mac: Mac::parse("aa:bb:cc:dd:ee:ff").unwrap(),
                ip: "127.0.0.1".parse().unwrap(),
            },
            phone: String::new(),
            code,
            expires_at: now + TimeDelta::minutes(3),
            attempts: 0,
        }
    }

    #[test]
    fn digest_round_trips_through_the_column() {
        let code = StoredPasscode::seal(&Passcode::from_generated("AB12CD".into()), [9; 16]);
        let text = code.to_column();
        assert!(!text.contains("AB12CD"));
        assert_eq!(StoredPasscode::from_column(&text), code);
        assert!(code.matches("AB12CD"));
        assert!(!code.matches("AB12CE"));
    }

    #[test]
    fn old_plaintext_passcodes_still_match() {
        let code = StoredPasscode::from_column("Q7ZK2M");
        assert_eq!(code, StoredPasscode::Plain(Secret::new("Q7ZK2M")));
        assert!(code.matches("Q7ZK2M"));
        assert!(!code.matches("Q7ZK2"));
        let sealed = code.sealed([1; 16]);
        assert!(matches!(sealed, StoredPasscode::Digest { .. }));
        assert!(sealed.matches("Q7ZK2M"));
        assert_eq!(sealed.sealed([2; 16]), sealed);
    }

    #[test]
    fn spent_passcodes_are_refused() {
        let policy = PasscodePolicy::default();
        let now = DateTime::<Utc>::UNIX_EPOCH;
        let mut r = record(StoredPasscode::from_column("Q7ZK2M"));
        assert!(policy.accepts(&r, "Q7ZK2M", now));
        assert!(!policy.accepts(&r, "Q7ZK2M", r.expires_at));
        assert!(policy.guessable(&r, now));
        assert!(!policy.guessable(&r, r.expires_at));
        r.attempts = 4;
        assert!(policy.guessable(&r, now));
        r.attempts = 5;
        assert!(!policy.accepts(&r, "Q7ZK2M", now));
        assert!(!policy.guessable(&r, now));
    }
}
