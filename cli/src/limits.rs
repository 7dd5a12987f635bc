//! `limits show|reset EMAIL|IP`: the brute-force counters of one email or
//! one client, on the real files, while a server runs (it reads them from
//! the file for every request, so a reset counts at once).

use std::io::Write;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use tokenizer_auth_engine::{Counter, CounterKey, Limits, normalize_ip};

use super::admin::{Change, record};
use super::config::Configuration;
use super::{Failure, LimitsCommand};

/// The counters kept for `subject`: an email's, or an address's (an IPv6
/// address stands for its prefix, as the server counts it).
fn counters_of(limits: &Limits, subject: &str) -> Result<Vec<CounterKey>, Failure> {
    if let Ok(ip) = subject.parse::<IpAddr>() {
        let client = limits.client(normalize_ip(ip));
        return Ok(vec![CounterKey::FailuresByIp(client), CounterKey::PasscodeRequestsByIp(client)]);
    }
    if !subject.contains('@') {
        return Err(Failure::Usage(format!("{subject:?} is neither an email nor an IP address")));
    }
    let email = subject.to_owned();
    Ok(vec![
        CounterKey::FailuresByEmail(email.clone()),
        CounterKey::FailureStreak(email.clone()),
        CounterKey::PasscodeRequestsByEmail(email),
    ])
}

/// Whether the counter refuses requests at `now`, and its bound, as the
/// engine's rules have it.
fn state(limits: &Limits, key: &CounterKey, counter: &Counter, now: DateTime<Utc>) -> (bool, u32) {
    let window = match key {
        CounterKey::PasscodeRequestsByEmail(_) => limits.passcode_requests_per_email,
        CounterKey::PasscodeRequestsByIp(_) => limits.passcode_requests_per_ip,
        CounterKey::FailuresByEmail(_) => limits.failures_per_email,
        CounterKey::FailuresByIp(_) => limits.failures_per_ip,
        CounterKey::FailureStreak(_) => {
            return (limits.locked(Some(counter), now), limits.max_consecutive_failures);
        }
    };
    (window.exhausted(Some(counter), now), window.max)
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

pub(super) fn run(config: &Configuration, command: &LimitsCommand) -> Result<(), Failure> {
    let limits = config.settings().engine.limits;
    let open = || super::admin::open(config);
    let mut out = std::io::stdout().lock();
    match command {
        LimitsCommand::Show { subject } => {
            let keys = counters_of(&limits, subject)?;
            let now = Utc::now();
            for (key, counter) in open()?.counters(&keys)? {
                let (refusing, max) = state(&limits, &key, &counter, now);
                let bound = if max == 0 || max == u32::MAX { "off".to_owned() } else { max.to_string() };
                let status = if refusing { "refusing" } else { "open" };
                writeln!(
                    out,
                    "{}\t{}\t{} counted (limit {bound})\tsince {}\tlast {}\t{status}",
                    key.limit_name(),
                    limits.subject(&key),
                    counter.count,
                    time(counter.since),
                    time(counter.last),
                )?;
            }
        }
        LimitsCommand::Reset { subject } => {
            let keys = counters_of(&limits, subject)?;
            let mut store = open()?;
            let now = Utc::now();
            let was_locked = store.counters(&keys)?.iter().any(|(key, counter)| {
                matches!(key, CounterKey::FailureStreak(_)) && state(&limits, key, counter, now).0
            });
            let removed = store.reset_counters(&keys)?;
            let (email, ip) = match subject.parse::<IpAddr>() {
                Ok(ip) => (None, Some(ip)),
                Err(_) => (Some(subject.as_str()), None),
            };
            let detail = Some(format!("{removed} counters removed"));
            record(config, Change { event: "limits_reset", email, ip, mac: None, detail })?;
            if was_locked {
                record(config, Change { event: "account_unlocked", email, ip, mac: None, detail: None })?;
            }
            let shown = keys.first().map(|k| limits.subject(k)).unwrap_or_default();
            writeln!(out, "reset {removed} counters of {shown}")?;
        }
    }
    Ok(())
}
