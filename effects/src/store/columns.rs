//! How engine values are spelled in SQLite columns.
//!
//! The old server's tables keep their text columns: `passcode_table.expiry`
//! is written as Python's `str(datetime)` would (`YYYY-MM-DD HH:MM:SS.ffffff`,
//! UTC), and read in that form with or without the fraction. Columns this
//! project added hold Unix milliseconds.

use chrono::{DateTime, NaiveDateTime, Utc};
use tokenizer_auth_engine::CounterKey;

/// The old server's time text, as written.
pub(crate) fn time_text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Reads the old server's time text; `None` if it is not a time.
pub(crate) fn parse_time_text(text: &str) -> Option<DateTime<Utc>> {
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text.trim(), f).ok())
        .map(|t| t.and_utc())
}

/// Unix milliseconds, for the columns this project added.
pub(crate) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Reads Unix milliseconds back.
pub(crate) fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The `counters.key` text of a counter.
pub(crate) fn counter_key(key: &CounterKey) -> String {
    match key {
        CounterKey::PasscodeRequestsByEmail(email) => format!("passcode-requests/email/{email}"),
        CounterKey::PasscodeRequestsByIp(ip) => format!("passcode-requests/ip/{ip}"),
        CounterKey::FailuresByEmail(email) => format!("failures/email/{email}"),
        CounterKey::FailuresByIp(ip) => format!("failures/ip/{ip}"),
        CounterKey::FailureStreak(email) => format!("streak/{email}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_text_reads_both_python_forms() {
        let t = parse_time_text("2024-05-01 12:30:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-05-01T12:30:00+00:00");
        let t = parse_time_text("2024-05-01 12:30:00.250000").unwrap();
        assert_eq!(t.timestamp_subsec_millis(), 250);
        assert_eq!(parse_time_text(&time_text(t)), Some(t));
        assert_eq!(parse_time_text("yesterday"), None);
    }
}
