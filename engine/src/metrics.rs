//! What the engine counts for the operator's metrics (docs/OPERATIONS.md,
//! "Metrics"): replies by kind, refused connections, refusals by each
//! brute-force limit, and each kind of effect asked for, answered, and how
//! long it took by the engine's clock.
//!
//! Counting must not cost the hot path, so these are plain integers in a
//! struct the engine owns, bumped where the thing happens (an add, no
//! atomic, no lock). A runtime reads them whole with
//! [`Engine::metrics`](crate::Engine::metrics) when it is scraped, on the
//! thread that owns the engine, and adds the gauges the engine knows
//! ([`Engine::connections`](crate::Engine::connections),
//! [`Engine::password_checks`](crate::Engine::password_checks)). They are
//! derived from the inputs like everything else, so a replay counts the
//! same.

use chrono::TimeDelta;

use crate::codec::reply::{ErrorCode, Reply};
use crate::effect::EffectKind;

/// Every kind of reply, by its metrics label: the six replies, then each
/// error code by its wire name.
pub const REPLY_KINDS: [&str; 13] = [
    "authorized",
    "renew",
    "unauthorized",
    "passcode_sent",
    "logged_in",
    "false",
    "malformed",
    "line_too_long",
    "rate_limited",
    "busy",
    "store_unavailable",
    "mail_unavailable",
    "too_many_connections",
];

/// Every brute-force limit, by its setting's name.
pub const LIMITS: [&str; 5] = [
    "passcode_requests_per_email",
    "passcode_requests_per_ip",
    "failures_per_email",
    "failures_per_ip",
    "max_consecutive_failures",
];

/// Every kind of effect, by its metrics label.
pub const EFFECT_KINDS: [&str; 5] = ["read", "write", "verify_password", "hash_password", "send_mail"];

/// The upper bounds of the effect latency buckets, in microseconds (the
/// last bucket, past them all, is `+Inf`): 50 µs to 10 s.
pub const LATENCY_BOUNDS_US: [u64; 14] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 10_000_000];

/// One kind of effect: how many were asked for and answered, and how long
/// the answered ones took.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct EffectStats {
    /// Asked for.
    pub performed: u64,
    /// Answered (the rest are in flight, or abandoned by a shutdown).
    pub completed: u64,
    /// Answered within each of [`LATENCY_BOUNDS_US`], and past them all
    /// (not cumulative: each answer is in one bucket).
    pub latency_buckets: [u64; LATENCY_BOUNDS_US.len() + 1],
    /// The sum of the answered ones' latencies, in microseconds.
    pub latency_sum_us: u64,
}

/// The engine's counters since it started.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct Metrics {
    /// Replies by kind, in the order of [`REPLY_KINDS`] (both protocols;
    /// what the legacy encoding turns into `False` is counted as what it
    /// was).
    pub replies: [u64; REPLY_KINDS.len()],
    /// Connections refused at the `max_connections` bound.
    pub connections_refused: u64,
    /// Requests refused by each limit, in the order of [`LIMITS`].
    pub limit_refusals: [u64; LIMITS.len()],
    /// Effects by kind, in the order of [`EFFECT_KINDS`].
    pub effects: [EffectStats; EFFECT_KINDS.len()],
}

impl Metrics {
    /// Adds `other`'s counts to these: a server of several engines (one
    /// per event loop) shows their sum.
    pub fn add(&mut self, other: &Metrics) {
        let add = |mine: &mut [u64], theirs: &[u64]| mine.iter_mut().zip(theirs).for_each(|(m, t)| *m += t);
        add(&mut self.replies, &other.replies);
        self.connections_refused += other.connections_refused;
        add(&mut self.limit_refusals, &other.limit_refusals);
        for (mine, theirs) in self.effects.iter_mut().zip(&other.effects) {
            mine.performed += theirs.performed;
            mine.completed += theirs.completed;
            add(&mut mine.latency_buckets, &theirs.latency_buckets);
            mine.latency_sum_us = mine.latency_sum_us.saturating_add(theirs.latency_sum_us);
        }
    }

    pub(crate) fn reply(&mut self, reply: &Reply) {
        let index = match reply {
            Reply::Authorized => 0,
            Reply::Renew(_) => 1,
            Reply::Unauthorized => 2,
            Reply::PasscodeSent => 3,
            Reply::LoggedIn(_) => 4,
            Reply::False => 5,
            Reply::Error(code) => 6 + error_index(*code),
        };
        self.replies[index] += 1;
    }

    /// A request refused by the limit of that setting
    /// ([`CounterKey::limit_name`](crate::CounterKey::limit_name)).
    pub(crate) fn refused_by(&mut self, limit: &str) {
        if let Some(index) = LIMITS.iter().position(|l| *l == limit) {
            self.limit_refusals[index] += 1;
        }
    }

    pub(crate) fn performed(&mut self, kind: EffectKind) {
        self.effects[effect_index(kind)].performed += 1;
    }

    pub(crate) fn completed(&mut self, kind: EffectKind, took: TimeDelta) {
        let stats = &mut self.effects[effect_index(kind)];
        let us = u64::try_from(took.num_microseconds().unwrap_or(i64::MAX)).unwrap_or(0);
        stats.completed += 1;
        stats.latency_sum_us = stats.latency_sum_us.saturating_add(us);
        let bucket = LATENCY_BOUNDS_US.iter().position(|&bound| us <= bound).unwrap_or(LATENCY_BOUNDS_US.len());
        stats.latency_buckets[bucket] += 1;
    }
}

fn error_index(code: ErrorCode) -> usize {
    ErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(0)
}

fn effect_index(kind: EffectKind) -> usize {
    match kind {
        EffectKind::Read => 0,
        EffectKind::Write => 1,
        EffectKind::VerifyPassword => 2,
        EffectKind::HashPassword => 3,
        EffectKind::SendMail => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_its_label_in_order() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(REPLY_KINDS[6 + i], code.as_str());
        }
        assert_eq!(REPLY_KINDS.len(), 6 + ErrorCode::ALL.len());
    }

    #[test]
    fn every_limit_has_its_label() {
        use crate::counters::CounterKey;
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let keys = [
            CounterKey::PasscodeRequestsByEmail(String::new()),
            CounterKey::PasscodeRequestsByIp(ip),
            CounterKey::FailuresByEmail(String::new()),
            CounterKey::FailuresByIp(ip),
            CounterKey::FailureStreak(String::new()),
        ];
        let mut m = Metrics::default();
        for key in &keys {
            m.refused_by(key.limit_name());
        }
        assert_eq!(m.limit_refusals, [1; LIMITS.len()]);
    }

    #[test]
    fn a_latency_lands_in_one_bucket() {
        let mut m = Metrics::default();
        m.performed(EffectKind::Read);
        m.completed(EffectKind::Read, TimeDelta::microseconds(50));
        m.completed(EffectKind::Read, TimeDelta::microseconds(51));
        m.completed(EffectKind::Read, TimeDelta::seconds(60));
        let read = &m.effects[0];
        assert_eq!((read.performed, read.completed, read.latency_sum_us), (1, 3, 60_000_101));
        assert_eq!(read.latency_buckets[0], 1, "50 µs is within the first bound");
        assert_eq!(read.latency_buckets[1], 1);
        assert_eq!(read.latency_buckets[LATENCY_BOUNDS_US.len()], 1, "past every bound");
    }
}
