//! Capture and replay. A capture is the list of `handle` calls a runtime
//! made: for each, the time, the input, the bytes the RNG gave during the
//! call, the request lines the engine took, and the outputs it produced.
//! Replay feeds the same calls to a fresh engine, with an RNG that plays the
//! recorded bytes back and the recorded request lines in place of parsing,
//! and checks that every output comes out the same, byte for byte.
//!
//! No password is ever written ([`redact`](self) says how): received bytes
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
//! # Format (version 2)
//!
//! Little-endian integers; `bytes` is a `u32` length and the bytes; a time
//! is `i64` seconds and `u32` nanoseconds since the Unix epoch.
//!
//! ```text
//! file    = MAGIC u32:version config record* [end]
//! config  = the engine settings, then 8 bytes: the server key's fingerprint
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
//! Version 1 (before the server key) had no fingerprint; its passcodes were
//! unkeyed, so this engine could not replay it faithfully, and it is
//! refused.

mod codec;
mod playback;
pub(crate) mod redact;
mod rng;
mod wire;

use chrono::{DateTime, Utc};

pub use codec::{Event, Recorded};
pub use wire::DecodeError;

use crate::codec::request::{ParseError, Request};
use crate::config::Config;
use crate::engine::Engine;
use crate::io::{ConnId, Input, Listener, Output};
use crate::server_key::{Fingerprint, ServerKey};
use codec::{read_config, read_event, read_recorded, read_request_line, read_time};
pub(crate) use playback::Playback;
use redact::RequestLine;
use rng::PlaybackRng;
pub(crate) use rng::RecordingRng;
use wire::{Reader, Writer};

/// The first bytes of every capture.
pub const MAGIC: &[u8; 24] = b"tokenizer-auth capture\n\0";
/// The format version this engine writes and reads.
pub const VERSION: u32 = 2;
/// The end mark: a record length no record has.
const END: [u8; 4] = 0u32.to_le_bytes();

/// What an engine keeps while it records.
pub(crate) struct Recorder {
    /// Each open connection's listener, which says how to mask its bytes.
    listeners: std::collections::BTreeMap<ConnId, Listener>,
    body: Option<Writer>,
    lines: Writer,
    line_count: u32,
    outputs: Writer,
    count: u32,
    done: Vec<u8>,
    /// Bytes of the capture so far: the header and the finished records.
    size: u64,
    /// The most the capture may hold, end mark included.
    max: u64,
    /// The bound was reached: the end mark is written, nothing more is.
    stopped: bool,
}

impl Recorder {
    /// A recorder whose capture, `header` included, stays within `max`
    /// bytes, and the file header for an engine with `config`.
    pub(crate) fn start(config: &Config, max: u64) -> (Recorder, Vec<u8>) {
        let mut w = Writer::default();
        w.buf.extend_from_slice(MAGIC);
        w.u32(VERSION);
        codec::config(&mut w, config);
        let mut recorder = Recorder {
            listeners: Default::default(),
            body: None,
            lines: Writer::default(),
            line_count: 0,
            outputs: Writer::default(),
            count: 0,
            done: Vec::new(),
            size: w.buf.len() as u64,
            max,
            stopped: false,
        };
        if recorder.size + END.len() as u64 > max {
            recorder.stop();
        }
        (recorder, w.buf)
    }

    /// Whether calls are still recorded.
    pub(crate) fn recording(&self) -> bool {
        !self.stopped
    }

    /// Whether the capture stopped at its bound.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    /// Starts the record of one `handle` call.
    pub(crate) fn begin(&mut self, now: DateTime<Utc>, input: &Input<'_>) {
        self.finish();
        if self.stopped {
            return;
        }
        let event = match input {
            Input::Opened { conn, peer, listener } => {
                self.listeners.insert(*conn, *listener);
                Event::Opened { conn: *conn, peer: *peer, listener: *listener }
            }
            Input::Received { conn, bytes } => {
                // Bytes for a connection the engine does not hold are
                // ignored by it; masked as native, they keep the least.
                let listener = self.listeners.get(conn).copied().unwrap_or(Listener::Native);
                Event::Received { conn: *conn, bytes: redact::mask(listener, bytes) }
            }
            Input::Closed { conn } => Event::Closed { conn: *conn },
            Input::Completed { id, result } => Event::Completed { id: *id, result: result.clone() },
            Input::Timeout => Event::Timeout,
            Input::Failed { conn } => Event::Failed { conn: *conn },
            Input::Sent { conn, bytes } => Event::Sent { conn: *conn, bytes: *bytes as u64 },
            Input::Shutdown => Event::Shutdown,
        };
        let mut w = Writer::default();
        codec::time(&mut w, now);
        codec::event(&mut w, &event);
        self.body = Some(w);
    }

    /// A request line the call took, with its parse outcome.
    pub(crate) fn request(&mut self, line: &[u8], parsed: &Result<Request<'_>, ParseError>) {
        if self.body.is_some() {
            codec::request_line(&mut self.lines, &RequestLine::of(line, parsed));
            self.line_count += 1;
        }
    }

    /// The randomness the call drew.
    pub(crate) fn drew(&mut self, bytes: &[u8]) {
        if let Some(w) = &mut self.body {
            w.bytes(bytes);
        }
    }

    /// One output of the call.
    pub(crate) fn output(&mut self, output: &Output) {
        if self.body.is_some() {
            codec::recorded(&mut self.outputs, &Recorded::of(output));
            self.count += 1;
        }
    }

    /// Closes the current record; or, if it would take the capture past its
    /// bound, drops it and ends the capture.
    fn finish(&mut self) {
        let lines = core::mem::take(&mut self.lines.buf);
        let outputs = core::mem::take(&mut self.outputs.buf);
        let (line_count, count) = (self.line_count, self.count);
        (self.line_count, self.count) = (0, 0);
        let Some(mut body) = self.body.take() else { return };
        body.u32(line_count);
        body.buf.extend_from_slice(&lines);
        body.u32(count);
        body.buf.extend_from_slice(&outputs);
        let mut framed = Writer::default();
        framed.bytes(&body.buf);
        let size = self.size + framed.buf.len() as u64;
        if size + END.len() as u64 > self.max {
            self.stop();
            return;
        }
        self.size = size;
        self.done.append(&mut framed.buf);
        // The buffers keep their capacity for the next record.
        self.lines.buf = lines;
        self.lines.buf.clear();
        self.outputs.buf = outputs;
        self.outputs.buf.clear();
    }

    fn stop(&mut self) {
        self.stopped = true;
        self.body = None;
        self.listeners.clear();
        self.done.extend_from_slice(&END);
        self.size += END.len() as u64;
    }

    /// Whole records not yet taken.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.finish();
        std::mem::take(&mut self.done)
    }

    /// Forgets a connection the engine closed.
    pub(crate) fn forget(&mut self, conn: ConnId) {
        self.listeners.remove(&conn);
    }
}

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
    /// [`Config::default`], which engines in tests run with.
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
