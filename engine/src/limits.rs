//! Brute-force bounds: rate limits per email and per IP, and the lockout
//! after too many consecutive failed logins. The rules are pure functions of
//! stored counters and the clock input; the counters themselves live in the
//! store, so the limits survive a restart.
//!
//! Every counter is keyed by the email *as sent*, whether or not an account
//! exists, so a limit never tells an attacker which emails are real.

use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};

use crate::store::Snapshot;

/// What a counter counts.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum CounterKey {
    /// Passcode requests for one email.
    PasscodeRequestsByEmail(String),
    /// Passcode requests from one IP.
    PasscodeRequestsByIp(IpAddr),
    /// Failed logins (and passcode requests with bad credentials) for one
    /// email.
    FailuresByEmail(String),
    /// Failed logins (and passcode requests with bad credentials) from one IP.
    FailuresByIp(IpAddr),
    /// Consecutive failures of one account, across all its passcodes; reset
    /// only by a successful login.
    FailureStreak(String),
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

/// One more event for a counter. The store applies it atomically: if the
/// stored counter has `since == self.since` its count goes up by one,
/// otherwise it restarts at one with `since`. Concurrent bumps therefore add
/// up instead of overwriting each other.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Bump {
    /// Which counter.
    pub key: CounterKey,
    /// The window (or streak) the event belongs to.
    pub since: DateTime<Utc>,
    /// When it happened.
    pub at: DateTime<Utc>,
}

impl Bump {
    /// The counter after this bump, given the stored one.
    pub fn apply(&self, stored: Option<Counter>) -> Counter {
        match stored {
            Some(c) if c.since == self.since => {
                Counter { since: c.since, count: c.count.saturating_add(1), last: self.at }
            }
            _ => Counter { since: self.since, count: 1, last: self.at },
        }
    }
}

/// At most `max` events per fixed window of `period`; `max == 0` turns the
/// limit off.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Window {
    /// Events allowed per window.
    pub max: u32,
    /// Length of a window.
    pub period: TimeDelta,
}

impl Window {
    /// `max` events per `period`.
    pub const fn new(max: u32, period: TimeDelta) -> Window {
        Window { max, period }
    }

    /// The start of the window `now` falls in. Windows are aligned to the
    /// Unix epoch, so every node computes the same one.
    pub fn start(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let period = self.period.num_milliseconds().max(1);
        let t = now.timestamp_millis();
        DateTime::from_timestamp_millis(t - t.rem_euclid(period)).unwrap_or(now)
    }

    /// Whether another event would go over the limit.
    pub fn exhausted(&self, stored: Option<&Counter>, now: DateTime<Utc>) -> bool {
        self.max != 0 && stored.is_some_and(|c| c.since == self.start(now) && c.count >= self.max)
    }

    /// The bump that counts an event at `now`.
    pub fn bump(&self, key: CounterKey, now: DateTime<Utc>) -> Bump {
        Bump { key, since: self.start(now), at: now }
    }
}

/// All the brute-force bounds. Defaults are documented in `docs/PROTOCOL.md`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limits {
    /// Passcode requests per email.
    pub passcode_requests_per_email: Window,
    /// Passcode requests per IP.
    pub passcode_requests_per_ip: Window,
    /// Failures per email.
    pub failures_per_email: Window,
    /// Failures per IP.
    pub failures_per_ip: Window,
    /// Consecutive failures after which the account refuses logins.
    pub max_consecutive_failures: u32,
    /// How long a locked account stays locked after its last failure.
    pub lockout: TimeDelta,
}

impl Default for Limits {
    fn default() -> Self {
        let quarter = TimeDelta::minutes(15);
        Limits {
            passcode_requests_per_email: Window::new(5, quarter),
            passcode_requests_per_ip: Window::new(50, quarter),
            failures_per_email: Window::new(20, quarter),
            failures_per_ip: Window::new(100, quarter),
            max_consecutive_failures: 100,
            lockout: TimeDelta::hours(1),
        }
    }
}

impl Limits {
    /// Whether the account's failure streak has it locked at `now`.
    pub fn locked(&self, streak: Option<&Counter>, now: DateTime<Utc>) -> bool {
        streak.is_some_and(|c| c.count >= self.max_consecutive_failures && now < c.last + self.lockout)
    }

    /// The bump that adds a failure to an account's streak. A streak whose
    /// lockout has passed starts over, so an account gets a fresh allowance
    /// of failures once its window passes.
    pub fn streak_bump(&self, email: &str, streak: Option<&Counter>, now: DateTime<Utc>) -> Bump {
        let since = match streak {
            Some(c) if c.count < self.max_consecutive_failures => c.since,
            _ => now,
        };
        Bump { key: CounterKey::FailureStreak(email.to_owned()), since, at: now }
    }
}

/// The counters a request's checks read.
impl Limits {
    /// Counters a login reads.
    pub(crate) fn login_counters(email: &str, ip: IpAddr) -> Vec<CounterKey> {
        vec![
            CounterKey::FailuresByEmail(email.to_owned()),
            CounterKey::FailuresByIp(ip),
            CounterKey::FailureStreak(email.to_owned()),
        ]
    }

    /// Counters a passcode request reads: a passcode request checks the
    /// password too, so it is also bound by the login limits.
    pub(crate) fn passcode_request_counters(email: &str, ip: IpAddr) -> Vec<CounterKey> {
        let mut keys = Self::login_counters(email, ip);
        keys.push(CounterKey::PasscodeRequestsByEmail(email.to_owned()));
        keys.push(CounterKey::PasscodeRequestsByIp(ip));
        keys
    }

    /// Whether a login must be refused before its credentials are looked at.
    pub(crate) fn refuses_login(&self, snapshot: &Snapshot, email: &str, ip: IpAddr, now: DateTime<Utc>) -> bool {
        let by_email = snapshot.counter(&CounterKey::FailuresByEmail(email.to_owned()));
        let by_ip = snapshot.counter(&CounterKey::FailuresByIp(ip));
        let streak = snapshot.counter(&CounterKey::FailureStreak(email.to_owned()));
        self.failures_per_email.exhausted(by_email, now)
            || self.failures_per_ip.exhausted(by_ip, now)
            || self.locked(streak, now)
    }

    /// Whether a passcode request must be refused before its credentials are
    /// looked at.
    pub(crate) fn refuses_passcode_request(
        &self,
        snapshot: &Snapshot,
        email: &str,
        ip: IpAddr,
        now: DateTime<Utc>,
    ) -> bool {
        let by_email = snapshot.counter(&CounterKey::PasscodeRequestsByEmail(email.to_owned()));
        let by_ip = snapshot.counter(&CounterKey::PasscodeRequestsByIp(ip));
        self.passcode_requests_per_email.exhausted(by_email, now)
            || self.passcode_requests_per_ip.exhausted(by_ip, now)
            || self.refuses_login(snapshot, email, ip, now)
    }

    /// The bumps that count a passcode request.
    pub(crate) fn passcode_request_bumps(&self, email: &str, ip: IpAddr, now: DateTime<Utc>) -> [Bump; 2] {
        [
            self.passcode_requests_per_email.bump(CounterKey::PasscodeRequestsByEmail(email.to_owned()), now),
            self.passcode_requests_per_ip.bump(CounterKey::PasscodeRequestsByIp(ip), now),
        ]
    }

    /// The bumps that count a failure: per email, per IP, and the account's
    /// streak.
    pub(crate) fn failure_bumps(&self, snapshot: &Snapshot, email: &str, ip: IpAddr, now: DateTime<Utc>) -> [Bump; 3] {
        let streak = snapshot.counter(&CounterKey::FailureStreak(email.to_owned()));
        [
            self.failures_per_email.bump(CounterKey::FailuresByEmail(email.to_owned()), now),
            self.failures_per_ip.bump(CounterKey::FailuresByIp(ip), now),
            self.streak_bump(email, streak, now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn windows_count_and_roll_over() {
        let w = Window::new(2, TimeDelta::seconds(60));
        let key = CounterKey::FailuresByEmail("a".into());
        let mut c = None;
        for t in [61, 62] {
            assert!(!w.exhausted(c.as_ref(), at(t)));
            c = Some(w.bump(key.clone(), at(t)).apply(c));
        }
        assert!(w.exhausted(c.as_ref(), at(119)));
        assert!(!w.exhausted(c.as_ref(), at(120)));
        assert!(!Window::new(0, TimeDelta::seconds(60)).exhausted(c.as_ref(), at(62)));
    }

    #[test]
    fn streak_locks_and_then_starts_over() {
        let limits = Limits { max_consecutive_failures: 3, lockout: TimeDelta::seconds(10), ..Limits::default() };
        let mut c = None;
        for t in 0..3 {
            assert!(!limits.locked(c.as_ref(), at(t)));
            c = Some(limits.streak_bump("a", c.as_ref(), at(t)).apply(c));
        }
        assert!(limits.locked(c.as_ref(), at(11)));
        assert!(!limits.locked(c.as_ref(), at(12)));
        let after = limits.streak_bump("a", c.as_ref(), at(12)).apply(c);
        assert_eq!(after.count, 1);
    }
}
