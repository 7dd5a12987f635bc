//! The counters behind the brute-force bounds, as the store keeps them,
//! and the two changes it makes to them: a [`Reservation`] (one more event,
//! only while the counter is below its bound) and a [`Refund`] (a place
//! given back). Each change says, in [`Reservation::apply`] and
//! [`Refund::apply`], exactly what the store's conditional write does, so
//! the in-memory store of the tests and the SQLite statements agree with
//! one rule.
//!
//! Which counters bind which attempt, and with what bound, is policy, in
//! `limits`; where counters are read and written is `store`. Both use this
//! module and neither imports the other's counter types, so the policy and
//! the store depend on each other one way only (the policy reads the
//! store's snapshot).

use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};

/// What a counter counts.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum CounterKey {
    /// Passcode requests for one email.
    PasscodeRequestsByEmail(String),
    /// Passcode requests from one IP (an IPv6 client's prefix).
    PasscodeRequestsByIp(IpAddr),
    /// Failed logins (and passcode requests with bad credentials) for one
    /// email.
    FailuresByEmail(String),
    /// Failed logins (and passcode requests with bad credentials) from one IP
    /// (an IPv6 client's prefix).
    FailuresByIp(IpAddr),
    /// Consecutive failures of one account, across all its passcodes; reset
    /// only by a successful login.
    FailureStreak(String),
}

impl CounterKey {
    /// The setting that bounds this counter, as operators know it.
    pub fn limit_name(&self) -> &'static str {
        match self {
            CounterKey::PasscodeRequestsByEmail(_) => "passcode_requests_per_email",
            CounterKey::PasscodeRequestsByIp(_) => "passcode_requests_per_ip",
            CounterKey::FailuresByEmail(_) => "failures_per_email",
            CounterKey::FailuresByIp(_) => "failures_per_ip",
            CounterKey::FailureStreak(_) => "max_consecutive_failures",
        }
    }
}

/// A stored counter.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Counter {
    /// Start of the window (or streak) being counted.
    pub since: DateTime<Utc>,
    /// Events counted since then.
    pub count: u32,
    /// When the last event was counted.
    pub last: DateTime<Utc>,
}

/// The bound a reservation is made under.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Bound {
    /// At most `max` events in the window that starts at `since`. A counter
    /// of another window starts over.
    Window {
        /// The start of the current window.
        since: DateTime<Utc>,
        /// Events allowed in it.
        max: u32,
    },
    /// At most `max` consecutive failures; a streak at `max` refuses until
    /// `lockout` after its last event, then starts over.
    Streak {
        /// Failures allowed in a row.
        max: u32,
        /// How long a full streak refuses.
        lockout: TimeDelta,
    },
}

/// One more event for a counter, counted only while the counter is below
/// its bound. The store applies it as an increment of the stored count
/// (`count = count + 1`, never a value computed from an earlier read),
/// conditional on the bound, in the write transaction; a reservation that
/// does not fit makes its whole batch a conflict.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Reservation {
    /// Which counter.
    pub key: CounterKey,
    /// Its bound.
    pub bound: Bound,
    /// When the event happens.
    pub at: DateTime<Utc>,
}

impl Reservation {
    /// The counter after this reservation, given the stored one, or `None`
    /// if the bound is reached. The store's conditional increment does the
    /// same.
    pub fn apply(&self, stored: Option<Counter>) -> Option<Counter> {
        let fresh = |since| Counter { since, count: 1, last: self.at };
        match (self.bound, stored) {
            (Bound::Window { since, .. }, None) => Some(fresh(since)),
            // A reservation made for an older window (a batch delayed
            // behind a newer one) counts in the stored window: a window
            // never goes back, or a late writer could restart a full one.
            (Bound::Window { since, max }, Some(c)) if c.since >= since => {
                (c.count < max).then(|| Counter { count: c.count.saturating_add(1), last: self.at, ..c })
            }
            (Bound::Window { since, .. }, Some(_)) => Some(fresh(since)),
            (Bound::Streak { .. }, None) => Some(fresh(self.at)),
            (Bound::Streak { max, .. }, Some(c)) if c.count < max => {
                Some(Counter { count: c.count.saturating_add(1), last: self.at, ..c })
            }
            (Bound::Streak { lockout, .. }, Some(c)) => (self.at >= c.last + lockout).then(|| fresh(self.at)),
        }
    }
}

/// Gives back a place reserved by an attempt that turned out not to be a
/// failure (or not to need one). The store decrements the count if it is
/// above zero and still counts what the place was taken in (see [`Place`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Refund {
    /// Which counter.
    pub key: CounterKey,
    /// What the place was taken in.
    pub place: Place,
}

/// What a refunded place was taken in. A refund of a place in a count that
/// has since ended gives nothing back: giving it to the count that
/// replaced it would let one more event into that one than its bound (a
/// slow right password whose streak filled, locked and restarted while it
/// was checked would hand the new streak's attacker an extra guess).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Place {
    /// The window that starts at this instant.
    Window(DateTime<Utc>),
    /// The streak under way when the place was reserved, at this instant:
    /// a streak that started later is another one.
    Streak(DateTime<Utc>),
}

impl Refund {
    /// The counter after this refund, given the stored one.
    pub fn apply(&self, stored: Option<Counter>) -> Option<Counter> {
        stored.map(|c| {
            let same = match self.place {
                Place::Window(since) => c.since == since,
                Place::Streak(reserved_at) => c.since <= reserved_at,
            };
            if same { Counter { count: c.count.saturating_sub(1), ..c } } else { c }
        })
    }
}
