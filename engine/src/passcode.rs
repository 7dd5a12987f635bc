//! The passcode rules, all in one place: what a passcode looks like, how it
//! is stored (only as a salted digest keyed with the server key), when it is
//! still usable (unexpired, fewer than the allowed wrong guesses) and what a
//! failed login does to it.

use core::fmt;
use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};
use hmac::Mac as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::device::Mac;
use crate::hex;
use crate::secret::Secret;
use crate::server_key::ServerKey;

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
///
/// There are only 36⁶ passcodes, so an unkeyed digest of one is found by
/// brute force in minutes: what this server writes is keyed with the
/// server key (docs/SECURITY.md, "Secrets at rest"). The keyed digest is
/// taken over the unkeyed one, `HMAC-SHA-256(key, SHA-256(salt ‖ code))`,
/// so that a row written before there was a key can be keyed in place at
/// start-up ([`StoredPasscode::keyed`]) without knowing its code.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum StoredPasscode {
    /// `HMAC-SHA-256(key, SHA-256(salt ‖ passcode))` with a per-passcode
    /// salt: what this server writes.
    Keyed {
        /// Random salt drawn with the passcode.
        salt: [u8; 16],
        /// The keyed digest.
        hash: [u8; 32],
    },
    /// `SHA-256(salt ‖ passcode)`, unkeyed: written by earlier versions of
    /// this server (and by the store when it seals an old plaintext before
    /// the key is known). Still honoured until it expires, never written by
    /// the engine.
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

const KEYED_TAG: &str = "hmac-sha256$";
const DIGEST_TAG: &str = "sha256$";

impl StoredPasscode {
    /// Seals a fresh passcode for storage, keyed.
    pub fn seal(passcode: &Passcode, salt: [u8; 16], key: &ServerKey) -> StoredPasscode {
        StoredPasscode::Keyed { salt, hash: keyed_digest(key, &digest(&salt, passcode.expose().as_bytes())) }
    }

    /// This passcode as an unkeyed digest, for a store that has no key: an
    /// old server's plaintext is sealed with `salt`, anything else is
    /// returned as it is.
    pub fn sealed(&self, salt: [u8; 16]) -> StoredPasscode {
        match self {
            StoredPasscode::Keyed { .. } | StoredPasscode::Digest { .. } => self.clone(),
            StoredPasscode::Plain(plain) => {
                StoredPasscode::Digest { salt, hash: digest(&salt, plain.expose().as_bytes()) }
            }
        }
    }

    /// This passcode keyed under `key`: an unkeyed digest is keyed in
    /// place, a plaintext is sealed with `salt` and keyed, a keyed one is
    /// returned as it is.
    pub fn keyed(&self, key: &ServerKey, salt: [u8; 16]) -> StoredPasscode {
        match self.sealed(salt) {
            StoredPasscode::Digest { salt, hash } => StoredPasscode::Keyed { salt, hash: keyed_digest(key, &hash) },
            other => other,
        }
    }

    /// Whether `candidate` is this passcode, in constant time. `key` is the
    /// server key, which keyed digests need.
    pub fn matches(&self, key: &ServerKey, candidate: &str) -> bool {
        match self {
            StoredPasscode::Keyed { salt, hash } => {
                keyed_digest(key, &digest(salt, candidate.as_bytes())).ct_eq(hash).into()
            }
            StoredPasscode::Digest { salt, hash } => digest(salt, candidate.as_bytes()).ct_eq(hash).into(),
            StoredPasscode::Plain(plain) => plain.expose().as_bytes().ct_eq(candidate.as_bytes()).into(),
        }
    }

    /// The column text: `hmac-sha256$<salt hex>$<digest hex>`, the earlier
    /// `sha256$<salt hex>$<digest hex>`, or the old server's plaintext.
    pub fn to_column(&self) -> String {
        let tagged = |tag: &str, salt: &[u8; 16], hash: &[u8; 32]| {
            let mut out = String::with_capacity(tag.len() + 32 + 1 + 64);
            out.push_str(tag);
            hex::push(&mut out, salt);
            out.push('$');
            hex::push(&mut out, hash);
            out
        };
        match self {
            StoredPasscode::Keyed { salt, hash } => tagged(KEYED_TAG, salt, hash),
            StoredPasscode::Digest { salt, hash } => tagged(DIGEST_TAG, salt, hash),
            StoredPasscode::Plain(plain) => plain.expose().to_owned(),
        }
    }

    /// Reads the column text back. Anything that is not a digest is the old
    /// server's plaintext.
    pub fn from_column(text: &str) -> StoredPasscode {
        let salt_and_hash = |rest: &str| {
            let (salt, hash) = rest.split_once('$')?;
            let salt: [u8; 16] = hex::decode(salt)?.try_into().ok()?;
            Some((salt, hex::decode32(hash.as_bytes())?))
        };
        let parsed = if let Some(rest) = text.strip_prefix(KEYED_TAG) {
            salt_and_hash(rest).map(|(salt, hash)| StoredPasscode::Keyed { salt, hash })
        } else if let Some(rest) = text.strip_prefix(DIGEST_TAG) {
            salt_and_hash(rest).map(|(salt, hash)| StoredPasscode::Digest { salt, hash })
        } else {
            None
        };
        parsed.unwrap_or_else(|| StoredPasscode::Plain(Secret::new(text)))
    }
}

fn digest(salt: &[u8; 16], code: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(code);
    h.finalize().into()
}

fn keyed_digest(key: &ServerKey, digest: &[u8; 32]) -> [u8; 32] {
    key.mac().chain_update(digest).finalize().into_bytes().into()
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
    pub(crate) fn accepts(
        &self,
        key: &ServerKey,
        record: &PasscodeRecord,
        candidate: &str,
        now: DateTime<Utc>,
    ) -> bool {
        let matches = record.code.matches(key, candidate);
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
    fn keyed_digests_round_trip_through_the_column() {
        let key = ServerKey::from_bytes([7; 32]);
        let code = StoredPasscode::seal(&Passcode::from_generated("AB12CD".into()), [9; 16], &key);
        let text = code.to_column();
        assert!(text.starts_with("hmac-sha256$") && !text.contains("AB12CD"), "{text}");
        assert_eq!(StoredPasscode::from_column(&text), code);
        assert!(code.matches(&key, "AB12CD"));
        assert!(!code.matches(&key, "AB12CE"));
        // Another key (a lost or rotated one) matches nothing.
        assert!(!code.matches(&ServerKey::from_bytes([8; 32]), "AB12CD"));
        // Neither does the unkeyed digest of the code.
        let StoredPasscode::Keyed { salt, hash } = code else { panic!() };
        assert_ne!(digest(&salt, b"AB12CD"), hash);
    }

    #[test]
    fn old_plaintext_and_unkeyed_passcodes_still_match() {
        let key = ServerKey::from_bytes([7; 32]);
        let code = StoredPasscode::from_column("Q7ZK2M");
        assert_eq!(code, StoredPasscode::Plain(Secret::new("Q7ZK2M")));
        assert!(code.matches(&key, "Q7ZK2M"));
        assert!(!code.matches(&key, "Q7ZK2"));
        let sealed = code.sealed([1; 16]);
        assert!(matches!(sealed, StoredPasscode::Digest { .. }));
        assert!(sealed.to_column().starts_with("sha256$"));
        assert_eq!(StoredPasscode::from_column(&sealed.to_column()), sealed);
        assert!(sealed.matches(&key, "Q7ZK2M"));
        assert_eq!(sealed.sealed([2; 16]), sealed);

        // Keyed in place, without the code: same salt, keyed digest.
        let keyed = sealed.keyed(&key, [3; 16]);
        assert!(matches!(keyed, StoredPasscode::Keyed { salt, .. } if salt == [1; 16]), "{keyed:?}");
        assert!(keyed.matches(&key, "Q7ZK2M"));
        assert!(!keyed.matches(&key, "Q7ZK2N"));
        assert_eq!(keyed.keyed(&key, [4; 16]), keyed);
        assert!(code.keyed(&key, [5; 16]).matches(&key, "Q7ZK2M"));
    }

    #[test]
    fn spent_passcodes_are_refused() {
        let policy = PasscodePolicy::default();
        let now = DateTime::<Utc>::UNIX_EPOCH;
        let mut r = record(StoredPasscode::from_column("Q7ZK2M"));
        let key = ServerKey::default();
        assert!(policy.accepts(&key, &r, "Q7ZK2M", now));
        assert!(!policy.accepts(&key, &r, "Q7ZK2M", r.expires_at));
        assert!(policy.guessable(&r, now));
        assert!(!policy.guessable(&r, r.expires_at));
        r.attempts = 4;
        assert!(policy.guessable(&r, now));
        r.attempts = 5;
        assert!(!policy.accepts(&key, &r, "Q7ZK2M", now));
        assert!(!policy.guessable(&r, now));
    }
}
