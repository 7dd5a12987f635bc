//! Brute-force bounds: rate limits per email and per IP, and the lockout
//! after too many consecutive failed logins. The rules are pure functions of
//! stored counters and the clock input; the counters themselves live in the
//! store, so the limits survive a restart.
//!
//! Every counter is keyed by the email *as sent*, whether or not an account
//! exists, so a limit never tells an attacker which emails are real. IPv6
//! clients are counted by their prefix (`ipv6_limit_prefix`, /64 by
//! default), the block one subscriber holds; IPv4 clients by their address.
//!
//! A bound holds under any concurrency because every attempt *reserves* its
//! place before its password is checked (`docs/SECURITY.md`, "Brute-force
//! bounds under concurrency"): a [`Reservation`] is a store-side increment
//! made only while the counter is below its bound, all of a request's
//! reservations commit together or not at all, and only then is the
//! password verified. A success gives back what it reserved afterwards
//! ([`Refund`], or a reset of the streak). Reading the counters first is
//! only a shortcut that refuses without a write when a bound is already
//! reached.
//!
//! The counters and the changes the store makes to them are in `counters`;
//! this module decides which of them an attempt reads, reserves and gives
//! back, and reads them from the store's [`Snapshot`].

use std::net::{IpAddr, Ipv6Addr};

use chrono::{DateTime, TimeDelta, Utc};

use crate::counters::{Bound, Counter, CounterKey, Place, Refund, Reservation};
use crate::store::Snapshot;

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

    /// The reservation that counts an event at `now`; none when the limit
    /// is off.
    pub fn reserve(&self, key: CounterKey, now: DateTime<Utc>) -> Option<Reservation> {
        (self.max != 0).then(|| Reservation {
            key,
            bound: Bound::Window { since: self.start(now), max: self.max },
            at: now,
        })
    }

    /// Gives back a place reserved at `reserved_at`.
    pub fn refund(&self, key: CounterKey, reserved_at: DateTime<Utc>) -> Option<Refund> {
        (self.max != 0).then(|| Refund { key, place: Place::Window(self.start(reserved_at)) })
    }
}

/// What is attempted, and so which limits bind it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum AttemptKind {
    /// A login: the failure limits.
    Login,
    /// A passcode request: its own limits and the failure limits.
    PasscodeRequest,
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
    /// The per-IP limits count an IPv6 client by its first this many bits
    /// (0 to 128): one subscriber usually holds a whole /64.
    pub ipv6_prefix: u8,
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
            ipv6_prefix: 64,
        }
    }
}

impl Limits {
    /// Whether the account's failure streak has it locked at `now`.
    pub fn locked(&self, streak: Option<&Counter>, now: DateTime<Utc>) -> bool {
        self.lockout_on()
            && streak.is_some_and(|c| c.count >= self.max_consecutive_failures && now < c.last + self.lockout)
    }

    /// Whether a failure reserved at `at` on the streak `key`, `stored` as
    /// read, fills it, and so locks the account.
    pub(crate) fn fills_streak(&self, key: CounterKey, stored: Option<&Counter>, at: DateTime<Utc>) -> bool {
        let streak = Bound::Streak { max: self.max_consecutive_failures, lockout: self.lockout };
        self.lockout_on()
            && Reservation { key, bound: streak, at }
                .apply(stored.copied())
                .is_some_and(|c| c.count >= self.max_consecutive_failures)
    }

    /// Whether the lockout is on at all: `0` for either setting turns it
    /// off, as `max = 0` does a window (so does `u32::MAX`, a streak no
    /// one reaches).
    fn lockout_on(&self) -> bool {
        !matches!(self.max_consecutive_failures, 0 | u32::MAX) && self.lockout > TimeDelta::zero()
    }

    /// The address the per-IP limits count `ip` under: an IPv4 address as
    /// it is, an IPv6 one as its prefix (the rest of the bits zero).
    pub fn client(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => {
                let bits = u32::from(self.ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }

    /// How a counter's subject is shown to an operator: the email, the
    /// IPv4 address, or the IPv6 prefix.
    pub fn subject(&self, key: &CounterKey) -> String {
        match key {
            CounterKey::PasscodeRequestsByEmail(email)
            | CounterKey::FailuresByEmail(email)
            | CounterKey::FailureStreak(email) => email.clone(),
            CounterKey::PasscodeRequestsByIp(ip) | CounterKey::FailuresByIp(ip) => match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("{v6}/{}", self.ipv6_prefix.min(128)),
            },
        }
    }

    /// The failure counters of a credential check from `ip`, with the
    /// bound of each: per email, per IP, and the account's streak.
    fn failure_counters(&self, email: &str, ip: IpAddr) -> [(CounterKey, Option<Window>); 3] {
        let client = self.client(ip);
        [
            (CounterKey::FailuresByEmail(email.to_owned()), Some(self.failures_per_email)),
            (CounterKey::FailuresByIp(client), Some(self.failures_per_ip)),
            (CounterKey::FailureStreak(email.to_owned()), None),
        ]
    }

    /// The passcode request counters, with their bounds.
    fn request_counters(&self, email: &str, ip: IpAddr) -> [(CounterKey, Option<Window>); 2] {
        [
            (CounterKey::PasscodeRequestsByEmail(email.to_owned()), Some(self.passcode_requests_per_email)),
            (CounterKey::PasscodeRequestsByIp(self.client(ip)), Some(self.passcode_requests_per_ip)),
        ]
    }

    /// The counters that bind an attempt, with their windows (`None`: the
    /// streak), in the order a refusal names them. A passcode request
    /// checks the password too, so it is bound by the login limits as well
    /// as its own.
    fn checks(&self, kind: AttemptKind, email: &str, ip: IpAddr) -> Vec<(CounterKey, Option<Window>)> {
        let requests = match kind {
            AttemptKind::Login => None,
            AttemptKind::PasscodeRequest => Some(self.request_counters(email, ip)),
        };
        requests.into_iter().flatten().chain(self.failure_counters(email, ip)).collect()
    }

    /// The counters an attempt reads.
    pub(crate) fn counters(&self, kind: AttemptKind, email: &str, ip: IpAddr) -> Vec<CounterKey> {
        self.checks(kind, email, ip).into_iter().map(|(k, _)| k).collect()
    }

    /// The limit that refuses an attempt in `snapshot` at `now`, before its
    /// credentials are looked at, if one does: the first counter whose
    /// bound is reached.
    pub(crate) fn refusal(
        &self,
        kind: AttemptKind,
        snapshot: &Snapshot,
        email: &str,
        ip: IpAddr,
        now: DateTime<Utc>,
    ) -> Option<CounterKey> {
        self.checks(kind, email, ip).into_iter().find_map(|(key, window)| {
            let stored = snapshot.counter(&key);
            let reached = match window {
                Some(w) => w.exhausted(stored, now),
                None => self.locked(stored, now),
            };
            reached.then_some(key)
        })
    }

    /// The places an attempt reserves before its password is verified: one
    /// on every counter that binds it (for a passcode request, the request
    /// itself and one failure).
    pub(crate) fn reservations(
        &self,
        kind: AttemptKind,
        email: &str,
        ip: IpAddr,
        now: DateTime<Utc>,
    ) -> Vec<Reservation> {
        let streak = Bound::Streak { max: self.max_consecutive_failures, lockout: self.lockout };
        self.checks(kind, email, ip)
            .into_iter()
            .filter_map(|(key, window)| match window {
                Some(w) => w.reserve(key, now),
                None => self.lockout_on().then_some(Reservation { key, bound: streak, at: now }),
            })
            .collect()
    }

    /// What a check whose credentials held gives back of the failure it
    /// reserved at `reserved_at`: its place in both windows, and, unless
    /// the streak is reset instead (`with_streak == false`), in the streak.
    pub(crate) fn failure_refunds(
        &self,
        email: &str,
        ip: IpAddr,
        reserved_at: DateTime<Utc>,
        with_streak: bool,
    ) -> Vec<Refund> {
        self.failure_counters(email, ip)
            .into_iter()
            .filter_map(|(key, window)| match window {
                Some(w) => w.refund(key, reserved_at),
                None => (with_streak && self.lockout_on()).then_some(Refund { key, place: Place::Streak(reserved_at) }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn windows_count_up_to_their_bound_and_roll_over() {
        let w = Window::new(2, TimeDelta::seconds(60));
        let key = CounterKey::FailuresByEmail("a".into());
        let mut c = None;
        for t in [61, 62] {
            assert!(!w.exhausted(c.as_ref(), at(t)));
            c = w.reserve(key.clone(), at(t)).unwrap().apply(c);
        }
        assert!(w.exhausted(c.as_ref(), at(119)));
        assert_eq!(w.reserve(key.clone(), at(119)).unwrap().apply(c), None, "a third place in one window");
        assert!(!w.exhausted(c.as_ref(), at(120)));
        assert_eq!(w.reserve(key.clone(), at(120)).unwrap().apply(c).map(|c| c.count), Some(1));
        assert!(Window::new(0, TimeDelta::seconds(60)).reserve(key, at(62)).is_none());
    }

    #[test]
    fn a_refund_gives_back_a_place_in_its_own_window_only() {
        let w = Window::new(2, TimeDelta::seconds(60));
        let key = CounterKey::FailuresByEmail("a".into());
        let c = w.reserve(key.clone(), at(61)).unwrap().apply(None);
        let c = w.reserve(key.clone(), at(62)).unwrap().apply(c);
        assert_eq!(w.refund(key.clone(), at(62)).unwrap().apply(c).map(|c| c.count), Some(1));
        assert_eq!(w.refund(key, at(10)).unwrap().apply(c).map(|c| c.count), Some(2), "another window's refund");
    }

    #[test]
    fn a_streak_bound_of_zero_is_off() {
        let limits = Limits { max_consecutive_failures: 0, ..Limits::default() };
        let key = CounterKey::FailureStreak("a".into());
        let reservations = limits.reservations(AttemptKind::Login, "a", "192.0.2.1".parse().unwrap(), at(1));
        assert!(reservations.iter().all(|r| r.key != key), "no streak is counted");
        let stored = Counter { since: at(0), count: 1, last: at(0) };
        assert!(!limits.locked(Some(&stored), at(1)));
    }

    #[test]
    fn a_late_reservation_never_restarts_a_newer_window() {
        let w = Window::new(2, TimeDelta::seconds(60));
        let key = CounterKey::FailuresByEmail("a".into());
        let c = w.reserve(key.clone(), at(61)).unwrap().apply(None);
        let c = w.reserve(key.clone(), at(62)).unwrap().apply(c);
        let late = w.reserve(key, at(59)).unwrap();
        assert_eq!(late.apply(c), None, "the newer window is full; an older window's reservation does not reset it");
    }

    #[test]
    fn streak_locks_and_then_starts_over() {
        let limits = Limits { max_consecutive_failures: 3, lockout: TimeDelta::seconds(10), ..Limits::default() };
        let streak = |t| Reservation {
            key: CounterKey::FailureStreak("a".into()),
            bound: Bound::Streak { max: 3, lockout: limits.lockout },
            at: at(t),
        };
        let mut c = None;
        for t in 0..3 {
            assert!(!limits.locked(c.as_ref(), at(t)));
            c = streak(t).apply(c);
        }
        assert!(limits.locked(c.as_ref(), at(11)));
        assert_eq!(streak(11).apply(c), None);
        assert!(!limits.locked(c.as_ref(), at(12)));
        assert_eq!(streak(12).apply(c).map(|c| c.count), Some(1));
    }

    #[test]
    fn ipv6_clients_are_counted_by_prefix() {
        let limits = Limits::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let inside = [ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff:ffff:ffff:ffff")];
        assert_eq!(limits.client(inside[0]), limits.client(inside[1]));
        assert_eq!(limits.client(inside[0]), ip("2001:db8:1:2::"));
        assert_ne!(limits.client(ip("2001:db8:1:3::1")), limits.client(inside[0]));
        assert_eq!(limits.client(ip("192.0.2.7")), ip("192.0.2.7"), "IPv4 per address");
        let exact = Limits { ipv6_prefix: 128, ..limits };
        assert_ne!(exact.client(inside[0]), exact.client(inside[1]));
        let all = Limits { ipv6_prefix: 0, ..limits };
        assert_eq!(all.client(inside[0]), ip("::"));
        let key = CounterKey::FailuresByIp(limits.client(inside[0]));
        assert_eq!(limits.subject(&key), "2001:db8:1:2::/64");
    }
}
