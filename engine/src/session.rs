//! The session rules: how long a token works, when an expired one may be
//! renewed by rotation, and the absolute age after which only a new login
//! will do.

use chrono::{DateTime, TimeDelta, Utc};

use crate::device::Mac;
use crate::store::SessionRecord;
use crate::token::MasterToken;

/// Token lifetime and absolute session age.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SessionPolicy {
    /// How long a token works before it must be renewed.
    pub token_ttl: TimeDelta,
    /// Age after which a session can no longer be renewed (and past which
    /// no token of it works). Zero means unlimited, the old server's
    /// behaviour.
    pub max_age: TimeDelta,
    /// How long after a rotation the rotated-away token, from the same
    /// binding, is still told its successor (see `renewal`).
    pub renew_grace: TimeDelta,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            token_ttl: TimeDelta::hours(1),
            max_age: TimeDelta::days(30),
            renew_grace: TimeDelta::seconds(10),
        }
    }
}

/// Where a session stands at some instant.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Standing {
    /// The token works.
    Valid,
    /// The token expired; the session may rotate to a new one.
    Renewable,
    /// Only a new login will do.
    Dead,
}

impl SessionPolicy {
    /// When a session that started at `started_at` dies; `None`: never (an
    /// unlimited age, or a start so far in the future, from a damaged row
    /// or capture, that its end is past the last representable instant).
    fn end_of_life(&self, started_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        (self.max_age > TimeDelta::zero()).then(|| started_at.checked_add_signed(self.max_age)).flatten()
    }

    /// The expiry of a token issued at `now` for a session started at
    /// `started_at`: one token lifetime, but never past the session's
    /// absolute age.
    fn expiry(&self, started_at: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        let expiry = now.checked_add_signed(self.token_ttl).unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.end_of_life(started_at).map_or(expiry, |end| expiry.min(end))
    }

    /// Whether a session that started at `started_at` is still within its
    /// absolute age at `now`.
    pub(crate) fn alive(&self, started_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        self.end_of_life(started_at).is_none_or(|end| now < end)
    }

    /// Where `session` stands at `now`.
    pub(crate) fn standing(&self, session: &SessionRecord, now: DateTime<Utc>) -> Standing {
        if !self.alive(session.started_at, now) {
            Standing::Dead
        } else if now < session.expires_at {
            Standing::Valid
        } else {
            Standing::Renewable
        }
    }

    /// A session for a login at `now`.
    pub(crate) fn start(&self, master: MasterToken, email: &str, mac: Mac, now: DateTime<Utc>) -> SessionRecord {
        SessionRecord { master, email: email.to_owned(), mac, started_at: now, expires_at: self.expiry(now, now) }
    }

    /// The session after rotating to `master` at `now`.
    pub(crate) fn renewed(&self, old: &SessionRecord, master: MasterToken, now: DateTime<Utc>) -> SessionRecord {
        SessionRecord {
            master,
            email: old.email.clone(),
            mac: old.mac,
            started_at: old.started_at,
            expires_at: self.expiry(old.started_at, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_renews_and_dies() {
        let policy = SessionPolicy {
            token_ttl: TimeDelta::seconds(10),
            max_age: TimeDelta::seconds(25),
            ..SessionPolicy::default()
        };
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let master = MasterToken::parse(&"0".repeat(64)).unwrap();
        let mac = Mac::parse("aa:bb:cc:dd:ee:ff").unwrap();
        let s = policy.start(master, "a@b.c", mac, t0);
        assert_eq!(policy.standing(&s, t0 + TimeDelta::seconds(9)), Standing::Valid);
        assert_eq!(policy.standing(&s, t0 + TimeDelta::seconds(10)), Standing::Renewable);
        let r = policy.renewed(&s, master, t0 + TimeDelta::seconds(20));
        assert_eq!(r.expires_at, t0 + TimeDelta::seconds(25), "capped at the absolute age");
        assert_eq!(policy.standing(&r, t0 + TimeDelta::seconds(25)), Standing::Dead);
        let unlimited = SessionPolicy { max_age: TimeDelta::zero(), ..policy };
        assert_eq!(unlimited.standing(&s, t0 + TimeDelta::days(9000)), Standing::Renewable);
    }
}
