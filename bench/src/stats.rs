//! What a run counts: replies by kind, latency histograms, and the CPU time
//! and memory of the processes involved (read from `/proc`).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// The kinds of reply a run tells apart.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ReplyKind {
    /// `authorized`.
    Authorized,
    /// `renew|<token>`.
    Renew,
    /// `unauthorized`.
    Unauthorized,
    /// `False` (native, or a pickled `False` on a legacy port).
    False,
    /// A login reply (`𝔄𝔴𝔣𝔢𝔯_…`).
    LoggedIn,
    /// `Passcode is sent`.
    PasscodeSent,
    /// `error|busy`.
    Busy,
    /// `error|rate_limited`.
    RateLimited,
    /// Any other `error|…`.
    Error,
    /// Anything else (the echo baseline's replies are this).
    Other,
}

impl ReplyKind {
    /// Every kind, in output order.
    pub(crate) const ALL: [ReplyKind; 10] = [
        ReplyKind::Authorized,
        ReplyKind::Renew,
        ReplyKind::Unauthorized,
        ReplyKind::False,
        ReplyKind::LoggedIn,
        ReplyKind::PasscodeSent,
        ReplyKind::Busy,
        ReplyKind::RateLimited,
        ReplyKind::Error,
        ReplyKind::Other,
    ];

    /// The name in output.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ReplyKind::Authorized => "authorized",
            ReplyKind::Renew => "renew",
            ReplyKind::Unauthorized => "unauthorized",
            ReplyKind::False => "false",
            ReplyKind::LoggedIn => "logged_in",
            ReplyKind::PasscodeSent => "passcode_sent",
            ReplyKind::Busy => "busy",
            ReplyKind::RateLimited => "rate_limited",
            ReplyKind::Error => "error",
            ReplyKind::Other => "other",
        }
    }

    /// Classifies a native reply line (without its LF).
    pub(crate) fn of_line(line: &[u8]) -> ReplyKind {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line {
            b"authorized" => ReplyKind::Authorized,
            b"unauthorized" => ReplyKind::Unauthorized,
            b"False" => ReplyKind::False,
            b"Passcode is sent" => ReplyKind::PasscodeSent,
            b"error|busy" => ReplyKind::Busy,
            b"error|rate_limited" => ReplyKind::RateLimited,
            _ if line.starts_with(b"renew|") => ReplyKind::Renew,
            _ if line.starts_with(b"error|") => ReplyKind::Error,
            _ if line.starts_with(tokenizer_auth_engine::LOGIN_PREFIX.as_bytes()) => ReplyKind::LoggedIn,
            _ => ReplyKind::Other,
        }
    }

    /// Classifies a legacy reply (a pickled string; every error is `False`
    /// there).
    pub(crate) fn of_pickle(reply: &[u8]) -> ReplyKind {
        let has = |needle: &[u8]| reply.windows(needle.len()).any(|w| w == needle);
        if has(b"False") {
            ReplyKind::False
        } else if has(tokenizer_auth_engine::LOGIN_PREFIX.as_bytes()) {
            ReplyKind::LoggedIn
        } else if has(b"Passcode is sent") {
            ReplyKind::PasscodeSent
        } else {
            ReplyKind::Other
        }
    }
}

/// Replies counted by kind.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Kinds([u64; 10]);

impl Kinds {
    /// Counts one reply.
    pub(crate) fn add(&mut self, kind: ReplyKind) {
        self.0[kind as usize] += 1;
    }

    /// How many of one kind.
    pub(crate) fn get(&self, kind: ReplyKind) -> u64 {
        self.0[kind as usize]
    }

    /// All replies.
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Adds another count.
    pub(crate) fn merge(&mut self, other: &Kinds) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// The non-zero counts, as a JSON object.
    pub(crate) fn json(&self) -> Value {
        let map = ReplyKind::ALL
            .iter()
            .filter(|k| self.get(**k) > 0)
            .map(|k| (k.name().to_owned(), Value::from(self.get(*k))))
            .collect();
        Value::Object(map)
    }

    /// The non-zero counts, as text.
    pub(crate) fn text(&self) -> String {
        let parts: Vec<String> = ReplyKind::ALL
            .iter()
            .filter(|k| self.get(**k) > 0)
            .map(|k| format!("{} {}", k.name(), self.get(*k)))
            .collect();
        if parts.is_empty() { "none".to_owned() } else { parts.join(", ") }
    }
}

/// A latency histogram in nanoseconds, 1 ns to 100 s, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).unwrap_or_else(|_| unreachable!("valid histogram bounds"))
}

/// Records one latency (saturating at the histogram's top).
pub(crate) fn record(hist: &mut Histogram<u64>, latency: Duration) {
    let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
    hist.saturating_record(ns);
}

/// The latency figures reported, in microseconds.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Latency {
    /// Median.
    pub(crate) p50: f64,
    /// 90th percentile.
    pub(crate) p90: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// 99.9th percentile.
    pub(crate) p999: f64,
    /// Largest.
    pub(crate) max: f64,
}

impl Latency {
    /// The figures of a histogram (all zero when it is empty).
    pub(crate) fn of(hist: &Histogram<u64>) -> Latency {
        if hist.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50: us(hist.value_at_quantile(0.50)),
            p90: us(hist.value_at_quantile(0.90)),
            p99: us(hist.value_at_quantile(0.99)),
            p999: us(hist.value_at_quantile(0.999)),
            max: us(hist.max()),
        }
    }

    /// As a JSON object (microseconds).
    pub(crate) fn json(&self) -> Value {
        json!({ "p50": round(self.p50), "p90": round(self.p90), "p99": round(self.p99),
                "p999": round(self.p999), "max": round(self.max) })
    }
}

/// Rounds to 3 decimals for output.
pub(crate) fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Microseconds as text with a sensible unit.
pub(crate) fn show_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1_000_000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// A count with thousands separators.
pub(crate) fn grouped(n: f64) -> String {
    let whole = n.round() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Linux reports process times in USER_HZ, which is 100 on every
/// architecture the kernel supports today.
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) of a `stat` file's contents.
fn stat_cpu(stat: &str) -> Option<f64> {
    // The command name may hold spaces: fields start after the last ')'.
    let fields = stat_fields(stat)?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// CPU seconds a process has used.
pub(crate) fn process_cpu(pid: u32) -> Option<f64> {
    stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds used by a process, by the processes it started that are
/// still running, and by those it has waited for (PostgreSQL's postmaster
/// and its backends: one per connection, the WAL writer, the checkpointer
/// ...).
pub(crate) fn tree_cpu(pid: u32) -> Option<f64> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let waited = stat_fields(&own).and_then(|f| {
        let (cutime, cstime): (f64, f64) = (f.get(13)?.parse().ok()?, f.get(14)?.parse().ok()?);
        Some((cutime + cstime) / USER_HZ)
    })?;
    let children: f64 = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| stat_fields(stat).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid))
        .filter_map(|stat| stat_cpu(&stat))
        .sum();
    Some(stat_cpu(&own)? + waited + children)
}

/// A `stat` file's fields after the command name: state is 0, the parent's
/// id 1, utime 11, stime 12, cutime 13, cstime 14.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat[stat.rfind(')')? + 2..].split_whitespace().collect())
}

/// CPU seconds this process has used.
pub(crate) fn own_cpu() -> Option<f64> {
    stat_cpu(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// CPU seconds used by this process's threads whose name starts with
/// `prefix` (live threads only).
pub(crate) fn threads_cpu(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    tasks
        .filter_map(Result::ok)
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix)))
        .filter_map(|t| stat_cpu(&std::fs::read_to_string(t.path().join("stat")).ok()?))
        .sum()
}

/// A process's resident memory, in KiB, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Memory {
    /// `VmRSS`: all resident pages.
    pub rss: u64,
    /// `VmHWM`: the peak of `rss`.
    pub hwm: u64,
    /// `RssAnon`: the process's own memory (heap, stacks): what it holds
    /// per session.
    pub anon: u64,
    /// `RssFile`: mapped file pages (the database files the store maps),
    /// which are the OS page cache, shared with every other process.
    pub file: u64,
}

pub(crate) fn memory_kib(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some(Memory {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
        anon: field("RssAnon:").unwrap_or(0),
        file: field("RssFile:").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_classified() {
        assert_eq!(ReplyKind::of_line(b"authorized"), ReplyKind::Authorized);
        assert_eq!(ReplyKind::of_line(b"renew|00ff"), ReplyKind::Renew);
        assert_eq!(ReplyKind::of_line(b"error|busy"), ReplyKind::Busy);
        assert_eq!(ReplyKind::of_line(b"error|store_unavailable"), ReplyKind::Error);
        assert_eq!(ReplyKind::of_line(b"False\r"), ReplyKind::False);
        let mut pickled = Vec::new();
        tokenizer_auth_engine::codec::pickle::dumps_str("False", &mut pickled);
        assert_eq!(ReplyKind::of_pickle(&pickled), ReplyKind::False);
        assert_eq!(grouped(1234567.0), "1,234,567");
        assert_eq!(grouped(12.0), "12");
    }

    #[test]
    fn stat_lines_parse() {
        let line = "123 (a b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 0 0 0";
        assert_eq!(stat_cpu(line), Some(3.0));
    }
}
