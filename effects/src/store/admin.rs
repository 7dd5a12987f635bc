//! Administration on the real files (`docs/CONFIGURATION.md`, "Commands"):
//! accounts and sessions, as the `user` and `session` commands see them.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use tokenizer_auth_engine::codec::request::{MAX_EMAIL, MAX_PHONE};
use tokenizer_auth_engine::{Mac, PasswordHash, Secret};

use super::columns::from_millis;
use super::{SqliteStore, StoreError};
use crate::mail::MailError;
use crate::password::{HashError, PasswordHasher};

/// Why an account could not be added or its passwords rehashed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The email cannot travel in a request line.
    #[error("invalid email {0:?}: it needs an @, at most {MAX_EMAIL} bytes, and no | or control characters")]
    InvalidEmail(String),
    /// The mailer would refuse the email as a recipient.
    #[error(transparent)]
    Recipient(#[from] MailError),
    /// The phone cannot travel in a request line.
    #[error("invalid phone {0:?}: at most {MAX_PHONE} bytes, no | or control characters")]
    InvalidPhone(String),
    /// An account with this email exists.
    #[error("user {0} already exists")]
    UserExists(String),
    /// A password could not be hashed.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for AdminError {
    fn from(e: rusqlite::Error) -> AdminError {
        AdminError::Store(e.into())
    }
}

/// An account as `user list` shows it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UserSummary {
    /// The account's email.
    pub email: String,
    /// Its phone, empty if none.
    pub phone: String,
    /// Whether its password is still the old server's plaintext.
    pub plaintext: bool,
    /// Its sessions.
    pub sessions: usize,
}

/// A session as `session list` shows it (never its token).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionSummary {
    /// Whose session.
    pub email: String,
    /// The device.
    pub mac: String,
    /// When the login happened.
    pub started_at: DateTime<Utc>,
    /// When the current token expires.
    pub expires_at: DateTime<Utc>,
}

/// Checks that an email and phone can be sent in a request line at all,
/// and that the mailer will take the email (with its own parser,
/// [`crate::mail::recipient`]), so a bad address is refused here rather
/// than later as a retryable `mail_unavailable`.
pub(super) fn check_account(email: &str, phone: &str) -> Result<(), AdminError> {
    let field_ok = |s: &str| !s.contains('|') && !s.chars().any(char::is_control);
    if email.is_empty() || email.len() > MAX_EMAIL || !email.contains('@') || !field_ok(email) {
        return Err(AdminError::InvalidEmail(email.to_owned()));
    }
    crate::mail::recipient(email)?;
    if phone.len() > MAX_PHONE || !field_ok(phone) {
        return Err(AdminError::InvalidPhone(phone.to_owned()));
    }
    Ok(())
}

impl SqliteStore {
    /// Adds an account. Fails if one with this email exists.
    pub fn add_user(&mut self, email: &str, phone: &str, password: &PasswordHash) -> Result<(), AdminError> {
        check_account(email, phone)?;
        let tx = self.creds.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = tx.query_row("SELECT 1 FROM op_creds WHERE email = ?1", [email], |_| Ok(())).optional()?;
        if exists.is_some() {
            return Err(AdminError::UserExists(email.to_owned()));
        }
        tx.execute(
            "INSERT INTO op_creds (mac, password, email, phone, token, expiry) VALUES ('', ?1, ?2, ?3, NULL, NULL)",
            params![password.as_column(), email, phone],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every account, by email.
    pub fn users(&self) -> Result<Vec<UserSummary>, StoreError> {
        let mut stmt = self.creds.prepare(
            "SELECT email, phone, password, (SELECT count(*) FROM sessions s WHERE s.email = c.email)
             FROM op_creds c WHERE email IS NOT NULL GROUP BY email ORDER BY email",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(UserSummary {
                email: r.get(0)?,
                phone: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                plaintext: PasswordHash::from_column(&r.get::<_, Option<String>>(2)?.unwrap_or_default())
                    .needs_upgrade(),
                sessions: r.get::<_, i64>(3)?.try_into().unwrap_or(0),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes an account with its sessions and passcodes. Returns whether
    /// it existed.
    pub fn remove_user(&mut self, email: &str) -> Result<bool, StoreError> {
        let tx = self.creds.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let removed = tx.execute("DELETE FROM op_creds WHERE email = ?1", [email])?;
        end_sessions(&tx, email, None)?;
        tx.commit()?;
        self.passcodes.execute("DELETE FROM passcode_table WHERE email = ?1", [email])?;
        Ok(removed > 0)
    }

    /// Replaces an account's password and ends its sessions. Returns whether
    /// the account exists.
    pub fn set_password(&mut self, email: &str, password: &PasswordHash) -> Result<bool, StoreError> {
        let tx = self.creds.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed =
            tx.execute("UPDATE op_creds SET password = ?2 WHERE email = ?1", params![email, password.as_column()])?;
        end_sessions(&tx, email, None)?;
        tx.commit()?;
        Ok(changed > 0)
    }

    /// Accounts whose password is still the old server's plaintext.
    pub fn plaintext_passwords(&self) -> Result<Vec<(String, Secret)>, StoreError> {
        let mut stmt = self.creds.prepare("SELECT email, password FROM op_creds WHERE email IS NOT NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (email, password) = row?;
            if let PasswordHash::Plain(secret) = PasswordHash::from_column(password.as_deref().unwrap_or_default()) {
                out.push((email, secret));
            }
        }
        Ok(out)
    }

    /// Replaces a password only if it is still `old` (so a concurrent
    /// change is never overwritten). Returns whether it did.
    pub fn replace_password(
        &mut self,
        email: &str,
        old: &PasswordHash,
        new: &PasswordHash,
    ) -> Result<bool, StoreError> {
        let changed = self.creds.execute(
            "UPDATE op_creds SET password = ?3 WHERE email = ?1 AND password = ?2",
            params![email, old.as_column(), new.as_column()],
        )?;
        Ok(changed > 0)
    }

    /// Hashes every plaintext password left by the old server (`user
    /// rehash`). Returns how many were hashed.
    pub fn rehash_plaintext(&mut self, hasher: &PasswordHasher) -> Result<usize, AdminError> {
        let mut hashed = 0;
        for (email, plain) in self.plaintext_passwords()? {
            let new = hasher.hash(&plain)?;
            if self.replace_password(&email, &PasswordHash::Plain(plain), &new)? {
                hashed += 1;
            }
        }
        // Leave no page with a plaintext password behind in the WAL.
        self.checkpoint()?;
        Ok(hashed)
    }

    /// Sessions, of one account or all, oldest login first.
    pub fn sessions(&self, email: Option<&str>) -> Result<Vec<SessionSummary>, StoreError> {
        let mut stmt = self.creds.prepare(
            "SELECT email, mac, started_at, expires_at FROM sessions
             WHERE ?1 IS NULL OR email = ?1 ORDER BY started_at, email, mac",
        )?;
        let rows = stmt.query_map([email], |r| {
            Ok(SessionSummary {
                email: r.get(0)?,
                mac: r.get(1)?,
                started_at: from_millis(r.get(2)?),
                expires_at: from_millis(r.get(3)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ends an account's sessions, or only those of one device. Returns how
    /// many ended.
    pub fn revoke(&mut self, email: &str, mac: Option<Mac>) -> Result<usize, StoreError> {
        let tx = self.creds.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ended = end_sessions(&tx, email, mac)?;
        tx.commit()?;
        Ok(ended)
    }
}

/// Deletes an account's sessions (or one device's) and the records of
/// their rotated-away tokens, which would otherwise still be told their
/// successor within the grace. Returns how many sessions ended.
fn end_sessions(tx: &rusqlite::Transaction<'_>, email: &str, mac: Option<Mac>) -> Result<usize, StoreError> {
    let mac = mac.map(|m| m.to_string());
    let ended =
        tx.execute("DELETE FROM sessions WHERE email = ?1 AND (?2 IS NULL OR mac = ?2)", params![email, mac])?;
    tx.execute("DELETE FROM rotations WHERE email = ?1 AND (?2 IS NULL OR mac = ?2)", params![email, mac])?;
    Ok(ended)
}
