//! Capture and replay. A capture is the list of `handle` calls a runtime
//! made: for each, the time, the input, the bytes the RNG gave during the
//! call, the request lines the engine took, and the outputs it produced.
//! Replay feeds the same calls to a fresh engine, with an RNG that plays the
//! recorded bytes back and the recorded request lines in place of parsing,
//! and checks that every output comes out the same, byte for byte.
//!
//! No password is ever written (`recording/redact.rs` says how): received bytes
//! are masked down to the bytes that frame lines, each request line is kept
//! as its parse outcome (a parsed line without its password, a line that
//! does not parse as the reason only), a legacy plaintext password in a read
//! result is written empty, and outputs are kept as their `Debug` text, in
//! which secrets show as `[redacted]`. The engine hands a password only to
//! the verification and hashing effects, whose results are recorded, so
//! replay needs none. Tokens come from the recorded randomness: a capture is
//! sensitive, and runtimes write it with mode 0600.
//!
//! The server key is never written either, only its fingerprint: replay
//! needs the key (passcodes are checked against keyed digests) and refuses
//! one with another fingerprint ([`Replay::with_key`]).
//!
//! A capture may be bounded ([`crate::Engine::start_capture_bounded`]): the
//! record that would take it past the bound is not written; an end mark is,
//! and recording stops. The file stays a whole capture, and replay says
//! where it was cut.
//!
//! # Format (version 4)
//!
//! Little-endian integers; `bytes` is a `u32` length and the bytes; a time
//! is `i64` seconds and `u32` nanoseconds since the Unix epoch.
//!
//! ```text
//! file    = MAGIC u32:version config record* [end]
//! config  = the engine settings (the last, `proxy_protocol_from`: u32:n
//!           (ip u8:prefix)*), then 8 bytes: the server key's fingerprint
//! record  = u32:length body                  (length of body, never 0)
//! end     = u32:0                            recording stopped at the bound
//! body    = time input bytes:rng u32:lines line* u32:count output*
//! input   = 0 u64:conn ip u8:listener        Opened
//!         | 1 u64:conn bytes                 Received (masked)
//!         | 5 u64:conn u32:length u32:n (u32:at u8:byte)*
//!                                            Received (masked), as its
//!                                            length and the n framing bytes
//!                                            kept, in order (up to 64 KiB)
//!         | 2 u64:conn                       Closed
//!         | 3 u64:effect result              Completed
//!         | 4                                Timeout
//!         | 6 u64:conn                       Failed
//!         | 7 u64:conn u64:bytes             Sent
//!         | 8                                Shutdown
//! line    = 0 bytes                          a request line that parsed,
//!                                            without its password
//!         | 1 u8:why                         one that did not
//!         | 2 u32:seen header                what a native connection's
//!                                            first bytes made as a PROXY
//!                                            header, once decided, after
//!                                            `seen` bytes
//! header  = 0 ip u32:port u32:consumed       a client's address
//!         | 1 u32:consumed                   a health check, or a header
//!                                            refused from a non-balancer
//!         | 2                                not a header
//! output  = 0 u64:conn bytes                 Transmit
//!         | 1 u64:conn                       Close
//!         | 2 u64:effect bytes:debug-text    Perform
//!         | 3 u64:conn                       HalfClose
//!         | 4                                Stopped
//! ```
//!
//! The file is append-only: records are written whole, one after another,
//! and a reader stops with a clear error at a truncated or corrupt one.
//!
//! Earlier versions are refused, as this engine could not replay them
//! faithfully: version 1 (before the server key) had no fingerprint and its
//! passcodes were unkeyed; version 2 (before the renewal grace) had no
//! `renew_grace` in its settings and no rotation records in its reads;
//! version 3 (before the PROXY protocol) had no `proxy_protocol_from`, and
//! no record of what a connection's first bytes made as a header.
//!
//! # Layout
//!
//! This module is the replay side: [`Replay`] drives an engine, so it
//! depends on `engine.rs`. The recording side, which an engine holds while
//! it records (and the format and redaction both sides share), is the
//! private module `recording`, which knows the inputs and outputs but never
//! the engine. So the engine depends on `recording`, this module on both,
//! and nothing on this module but the crate's users.

use crate::engine::Engine;
use crate::io::Input;
use crate::recording::codec::{read_config, read_event, read_recorded, read_request_line, read_time};
use crate::recording::wire::Reader;
pub use crate::recording::{DecodeError, Event, MAGIC, Recorded, VERSION};
use crate::recording::{Playback, PlaybackRng};
use crate::server_key::{Fingerprint, ServerKey};

/// Why a capture does not replay.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ReplayError {
    /// The file is not a capture of this format.
    NotACapture(String),
    /// Record `record` (counting from 1) could not be read.
    Corrupt {
        /// Which record.
        record: usize,
        /// What was wrong.
        reason: DecodeError,
    },
    /// The capture was recorded under another server key than the one
    /// given: replay would tell wrong passcodes from right ones wrongly.
    WrongKey {
        /// The fingerprint in the capture.
        recorded: Fingerprint,
        /// The fingerprint of the key given.
        given: Fingerprint,
    },
    /// The engine did something other than what was recorded.
    Divergence {
        /// Which record (counting from 1).
        record: usize,
        /// What the capture holds.
        expected: String,
        /// What the engine did.
        actual: String,
    },
}

impl core::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ReplayError::NotACapture(why) => write!(f, "not a tokenizer-auth capture: {why}"),
            ReplayError::Corrupt { record, reason } => write!(f, "record {record} is corrupt: {reason}"),
            ReplayError::WrongKey { recorded, given } => write!(
                f,
                "recorded under the server key with fingerprint {recorded}, but the key given has fingerprint \
                 {given}: give the recording server's key (its data folder's server.key, or server_key)"
            ),
            ReplayError::Divergence { record, expected, actual } => {
                write!(f, "divergence at event {record}:\n  expected: {expected}\n  actual:   {actual}")
            }
        }
    }
}

/// A capture being replayed, one record at a time.
pub struct Replay<'a> {
    engine: Engine,
    reader: Reader<'a>,
    total: usize,
    record: usize,
    cut: bool,
}

fn show(recorded: Option<&Recorded>) -> String {
    match recorded {
        None => "nothing".to_owned(),
        Some(Recorded::Transmit(conn, bytes)) => {
            format!("Transmit {{ conn: {}, bytes: {:?} }}", conn.0, String::from_utf8_lossy(bytes))
        }
        Some(Recorded::Close(conn)) => format!("Close {{ conn: {} }}", conn.0),
        Some(Recorded::Perform(id, text)) => format!("Perform {{ id: {}, effect: {text} }}", id.0),
        Some(Recorded::HalfClose(conn)) => format!("HalfClose {{ conn: {} }}", conn.0),
        Some(Recorded::Stopped) => "Stopped".to_owned(),
    }
}

impl<'a> Replay<'a> {
    /// [`Replay::with_key`] with the placeholder key of
    /// [`crate::Config::default`], which engines in tests run with.
    pub fn new(bytes: &'a [u8]) -> Result<Replay<'a>, ReplayError> {
        Replay::with_key(bytes, &ServerKey::default())
    }

    /// Reads a capture's header and sets up a fresh engine with its
    /// configuration and `key`, which must be the key it was recorded
    /// with (its fingerprint is in the header).
    pub fn with_key(bytes: &'a [u8], key: &ServerKey) -> Result<Replay<'a>, ReplayError> {
        let mut reader = Reader::new(bytes);
        let magic = reader.take(MAGIC.len()).map_err(|_| ReplayError::NotACapture("too short".into()))?;
        if magic != MAGIC {
            return Err(ReplayError::NotACapture("wrong magic bytes".into()));
        }
        let version = reader.u32().map_err(|_| ReplayError::NotACapture("too short".into()))?;
        if version != VERSION {
            return Err(ReplayError::NotACapture(format!("format version {version}, this build reads {VERSION}")));
        }
        let (mut config, recorded) =
            read_config(&mut reader).map_err(|e| ReplayError::NotACapture(format!("configuration: {e}")))?;
        if recorded != key.fingerprint() {
            return Err(ReplayError::WrongKey { recorded, given: key.fingerprint() });
        }
        config.server_key = key.clone();
        Ok(Replay { engine: Engine::new(config), reader, total: bytes.len(), record: 0, cut: false })
    }

    /// Bytes of the file read so far and in all (for progress).
    pub fn progress(&self) -> (usize, usize) {
        (self.total - self.remaining(), self.total)
    }

    fn remaining(&self) -> usize {
        self.reader.len()
    }

    /// Records replayed so far.
    pub fn records(&self) -> usize {
        self.record
    }

    /// Whether the capture ends with the mark of its size bound: recording
    /// stopped there while the server went on (known once [`Replay::step`]
    /// has returned `Ok(false)`).
    pub fn cut_at_bound(&self) -> bool {
        self.cut
    }

    /// Replays the next record. `Ok(false)` at the end of the capture.
    pub fn step(&mut self) -> Result<bool, ReplayError> {
        if self.reader.is_empty() || self.cut {
            return Ok(false);
        }
        self.record += 1;
        let record = self.record;
        let corrupt = |reason| ReplayError::Corrupt { record, reason };
        let body = self.reader.bytes().map_err(corrupt)?;
        if body.is_empty() {
            // The end mark: nothing may follow it.
            if !self.reader.is_empty() {
                return Err(corrupt(DecodeError::Invalid("bytes after the end mark")));
            }
            self.record -= 1;
            self.cut = true;
            return Ok(false);
        }
        let mut r = Reader::new(body);
        let now = read_time(&mut r).map_err(corrupt)?;
        let event = read_event(&mut r).map_err(corrupt)?;
        let drawn = r.bytes().map_err(corrupt)?;
        let line_count = r.u32().map_err(corrupt)?;
        let mut lines = Vec::new();
        for _ in 0..line_count {
            lines.push(read_request_line(&mut r).map_err(corrupt)?);
        }
        let count = r.u32().map_err(corrupt)?;
        let mut expected = Vec::new();
        for _ in 0..count {
            expected.push(read_recorded(&mut r).map_err(corrupt)?);
        }
        if !r.is_empty() {
            return Err(corrupt(DecodeError::Invalid("trailing bytes in a record")));
        }

        let mut rng = PlaybackRng::new(drawn);
        let input = match &event {
            Event::Opened { conn, peer, listener } => Input::Opened { conn: *conn, peer: *peer, listener: *listener },
            Event::Received { conn, bytes } => Input::Received { conn: *conn, bytes },
            Event::Closed { conn } => Input::Closed { conn: *conn },
            Event::Completed { id, result } => Input::Completed { id: *id, result: result.clone() },
            Event::Timeout => Input::Timeout,
            Event::Failed { conn } => Input::Failed { conn: *conn },
            Event::Sent { conn, bytes } => {
                Input::Sent { conn: *conn, bytes: usize::try_from(*bytes).unwrap_or(usize::MAX) }
            }
            Event::Shutdown => Input::Shutdown,
        };
        let recorded_lines = lines.len();
        self.engine.playback = Some(Playback::new(lines));
        self.engine.handle(now, &mut rng, input);
        let mut actual = Vec::new();
        while let Some(output) = self.engine.poll_output() {
            actual.push(Recorded::of(&output));
        }
        let playback = self.engine.playback.take().unwrap_or_default();
        for i in 0..expected.len().max(actual.len()) {
            if expected.get(i) != actual.get(i) {
                return Err(ReplayError::Divergence {
                    record,
                    expected: show(expected.get(i)),
                    actual: show(actual.get(i)),
                });
            }
        }
        if !playback.exact() {
            return Err(ReplayError::Divergence {
                record,
                expected: format!("{recorded_lines} request lines taken"),
                actual: "a different number".to_owned(),
            });
        }
        if !rng.exact() {
            return Err(ReplayError::Divergence {
                record,
                expected: format!("{} bytes of randomness drawn", drawn.len()),
                actual: format!("{} bytes drawn", rng.used()),
            });
        }
        Ok(true)
    }

    /// Replays everything; the number of records on success.
    pub fn run(mut self) -> Result<usize, ReplayError> {
        while self.step()? {}
        Ok(self.record)
    }
}
