//! Logs: `tracing` events to stderr, one line each, readable by default or
//! JSON (`log_format = "json"`), filtered by `log_level`. Set up once, in
//! `main`, before a command runs.
//!
//! Nothing secret is ever a field of an event: passwords, passcodes and
//! tokens are [`Secret`](tokenizer_auth_engine::Secret)s or redacted types
//! whose `Debug` says `[redacted]`, and the SMTP password is not logged at
//! all.

use std::io::{self, IsTerminal};

use tracing_subscriber::EnvFilter;

use super::config::LogFormat;

/// Installs the global subscriber. `level` was checked when the
/// configuration was loaded; a second call does nothing.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr);
    let _already_set = match format {
        LogFormat::Human => builder.with_ansi(io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
