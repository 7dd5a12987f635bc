//! Renewal as devices really use it (docs/PROTOCOL.md, "Renewal"). A device
//! whose token expired often sends it several times at once: pipelined on
//! one connection, or from several threads. Each of those requests must
//! learn the same new token, and none may read `unauthorized` and believe
//! it was logged out. The opposite case matters as much (RFC 9700
//! §4.14.2): a token rotated away that comes back later is in the hands of
//! someone the server cannot tell from the owner, so the whole session
//! goes.
//!
//! The rules, all here:
//!
//! - An expired token has exactly one successor, derived from it under the
//!   server key ([`successor`]). Every rotation of it computes the same
//!   successor, wherever and whenever it runs, so no second one can be
//!   minted, and nobody without the old token (and the key) can compute it.
//! - The store keeps a [`RotationRecord`] of each rotated-away token: its
//!   [`TokenTag`](crate::TokenTag) (a keyed digest of the token alone, so that it is found
//!   whatever binding presents it), the master token it had (its binding),
//!   its session and when it was rotated. No token is stored in plaintext.
//! - The same token from the same binding within `renew_grace` of its
//!   rotation is told the successor again ([`Verdict::Successor`]);
//!   presented later, or from another binding, it is reuse
//!   ([`Verdict::Reuse`]) and the whole session is revoked
//!   ([`crate::CredsOp::RevokeSession`]).
//! - A session keeps the records of its last [`REUSE_HISTORY`] rotations: a
//!   token rotated away before those is merely unknown.

use chrono::{DateTime, Utc};

use crate::server_key::ServerKey;
use crate::session::SessionPolicy;
use crate::store::RotationRecord;
use crate::token::{BaseToken, MasterToken};

/// Rotation records a session keeps: its last this many rotated-away
/// tokens are recognised as reuse (eight hours at the default one-hour
/// token lifetime). Older records are dropped as new ones are written, so
/// a session's history stays bounded however long it lives.
pub const REUSE_HISTORY: usize = 8;

/// The label of the successor derivation: a different input to the same
/// key than the tag's (`token`) and the passcode digests'.
const SUCCESSOR_LABEL: &[u8] = b"tokenizer-auth successor token\0";

/// The one successor of `token`.
pub fn successor(key: &ServerKey, token: &BaseToken) -> BaseToken {
    BaseToken::from_bytes(token.keyed(key, SUCCESSOR_LABEL))
}

/// What a rotated-away token presented again gets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Verdict {
    /// Nothing: its session is past its absolute age, so no token of it
    /// works and there is nothing left to protect.
    Ended,
    /// Its successor again: the same binding, within the grace.
    Successor,
    /// Reuse: after the grace, or from another binding. The session goes.
    Reuse(Reuse),
}

/// Why a presentation is reuse (for the operator's log).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reuse {
    /// From the binding it had, after the grace.
    AfterGrace,
    /// From another MAC or IP.
    OtherBinding,
}

impl Reuse {
    /// The words for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Reuse::AfterGrace => "after its grace",
            Reuse::OtherBinding => "from another device or address",
        }
    }
}

/// Judges a rotated-away token presented at `now` (when its request was
/// read, not when the store answered) by a binding whose master token for
/// it is `master`. The grace holds while the successor is not
/// older than `renew_grace`, its end included, so with a grace of zero the
/// checks that raced the rotation at its very instant still get the
/// successor. A clock that went back (a restart on another machine) counts
/// as within the grace. The grace never outlives the
/// session: past its absolute age, the token is merely dead.
pub(crate) fn judge(
    policy: &SessionPolicy,
    rotation: &RotationRecord,
    master: MasterToken,
    now: DateTime<Utc>,
) -> Verdict {
    if !policy.alive(rotation.started_at, now) {
        Verdict::Ended
    } else if rotation.master != master {
        Verdict::Reuse(Reuse::OtherBinding)
    } else if within_grace(policy, rotation.rotated_at, now) {
        Verdict::Successor
    } else {
        Verdict::Reuse(Reuse::AfterGrace)
    }
}

/// Whether `now` is no later than `renew_grace` after `rotated_at`, to the
/// millisecond: the store keeps times to the millisecond, so a check at the
/// rotation's own instant must compare equal to the stored time, whichever
/// store it was read from. Integer arithmetic, so no time from a damaged
/// row can overflow it.
fn within_grace(policy: &SessionPolicy, rotated_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now.timestamp_millis() <= rotated_at.timestamp_millis().saturating_add(policy.renew_grace.num_milliseconds())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Mac;
    use crate::token::TokenTag;
    use chrono::TimeDelta;

    fn record(master: MasterToken, rotated_at: DateTime<Utc>) -> RotationRecord {
        RotationRecord {
            tag: TokenTag::from_bytes([1; 32]),
            master,
            email: "a@b.c".into(),
            mac: Mac::parse("aa:bb:cc:dd:ee:ff").unwrap(),
            started_at: DateTime::UNIX_EPOCH,
            rotated_at,
        }
    }

    #[test]
    fn the_successor_and_the_tag_need_the_key_and_differ() {
        let token = BaseToken::from_bytes([7; 32]);
        let (k1, k2) = (ServerKey::from_bytes([1; 32]), ServerKey::from_bytes([2; 32]));
        assert_eq!(successor(&k1, &token), successor(&k1, &token));
        assert_ne!(successor(&k1, &token), successor(&k2, &token));
        assert_ne!(TokenTag::of(&k1, &token), TokenTag::of(&k2, &token));
        assert_ne!(successor(&k1, &token).as_bytes(), TokenTag::of(&k1, &token).as_bytes());
        assert_ne!(successor(&k1, &token), token);
        let tag = TokenTag::of(&k1, &token);
        assert_eq!(TokenTag::parse(&tag.to_hex()), Some(tag));
    }

    #[test]
    fn within_the_grace_from_the_binding_only() {
        let policy = SessionPolicy { renew_grace: TimeDelta::seconds(10), ..SessionPolicy::default() };
        let t0 = DateTime::<Utc>::UNIX_EPOCH + TimeDelta::days(1);
        let master = MasterToken::from_bytes([3; 32]);
        let other = MasterToken::from_bytes([4; 32]);
        let r = record(master, t0);
        assert_eq!(judge(&policy, &r, master, t0), Verdict::Successor);
        assert_eq!(judge(&policy, &r, master, t0 - TimeDelta::seconds(5)), Verdict::Successor);
        assert_eq!(judge(&policy, &r, master, t0 + TimeDelta::seconds(10)), Verdict::Successor);
        let after = t0 + TimeDelta::seconds(10) + TimeDelta::milliseconds(1);
        assert_eq!(judge(&policy, &r, master, after), Verdict::Reuse(Reuse::AfterGrace));
        // Read back from a file, the rotation's time lost its nanoseconds:
        // a check at its very instant is still within a grace of zero.
        let stored = record(master, t0);
        let instant = t0 + TimeDelta::nanoseconds(999_999);
        let none = SessionPolicy { renew_grace: TimeDelta::zero(), ..policy };
        assert_eq!(judge(&none, &stored, master, instant), Verdict::Successor);
        // A damaged row far in the future cannot overflow the sum.
        let far = record(master, DateTime::<Utc>::MAX_UTC);
        assert_eq!(judge(&policy, &far, master, t0), Verdict::Successor);
        assert_eq!(judge(&policy, &r, other, t0), Verdict::Reuse(Reuse::OtherBinding));
        let none = SessionPolicy { renew_grace: TimeDelta::zero(), ..policy };
        assert_eq!(judge(&none, &r, master, t0), Verdict::Successor, "the rotation's own instant");
        assert_eq!(judge(&none, &r, master, t0 + TimeDelta::milliseconds(1)), Verdict::Reuse(Reuse::AfterGrace));
        // Past the session's absolute age (30 days from its login at the
        // epoch), nothing: not even reuse.
        assert_eq!(judge(&policy, &r, other, DateTime::UNIX_EPOCH + TimeDelta::days(30)), Verdict::Ended);
    }
}
