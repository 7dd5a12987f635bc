//! `replay FILE`: feeds a capture to a fresh engine and checks every output
//! against the recording, byte for byte (see `tokenizer_auth_engine::capture`).

use std::io::{IsTerminal, Write};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use tokenizer_auth_effects::server_key;
use tokenizer_auth_engine::capture::{Replay, ReplayError};

use super::Failure;
use super::config::Configuration;

/// Captures smaller than this replay without a progress bar.
const PROGRESS_FROM: usize = 1 << 20;

/// Replays `file` with the server key the way `serve` finds it: `server_key`
/// if given, else the data folder's `server.key` (never created here).
pub(super) fn run(config: &Configuration, file: &Path) -> Result<(), Failure> {
    let bytes = std::fs::read(file).map_err(|e| Failure::Other(format!("cannot read {}: {e}", file.display())))?;
    let key = match config.server_key() {
        Some(key) => key.clone(),
        None => server_key::load(config.data_dir()).map_err(|e| {
            Failure::Other(format!(
                "{e}: replay needs the key the capture was recorded with (--data-dir of that server, or server_key)"
            ))
        })?,
    };
    let mut replay = Replay::with_key(&bytes, &key).map_err(|e| Failure::Other(format!("{}: {e}", file.display())))?;
    let (_, total) = replay.progress();
    let bar = if total >= PROGRESS_FROM && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(total as u64);
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}") {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    loop {
        match replay.step() {
            Ok(true) => {
                if replay.records() % 1024 == 0 {
                    bar.set_position(replay.progress().0 as u64);
                    bar.set_message(format!("{} events", replay.records()));
                }
            }
            Ok(false) => break,
            Err(e) => {
                bar.abandon();
                return Err(match e {
                    ReplayError::Divergence { .. } => Failure::Other(e.to_string()),
                    other => Failure::Other(format!("{}: {other}", file.display())),
                });
            }
        }
    }
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    writeln!(out, "replayed {} events: every output matched", replay.records())?;
    if replay.cut_at_bound() {
        writeln!(out, "the capture ends there: it reached its size bound (capture_max_bytes) and recording stopped")?;
    }
    Ok(())
}
