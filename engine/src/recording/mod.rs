//! The writing side of a capture, and the format both sides share (the
//! format and the redaction are described in [`crate::capture`]).
//!
//! The engine holds a [`Recorder`] while it records, draws through a
//! [`RecordingRng`], and during a replay takes its request lines from a
//! [`Playback`]. So this module knows the inputs and outputs ([`crate::io`])
//! but never the engine: the engine depends on it, and the replay in
//! [`crate::capture`], which drives an engine, depends on both.

pub(crate) mod codec;
mod playback;
pub(crate) mod redact;
mod rng;
pub(crate) mod wire;

use chrono::{DateTime, Utc};

pub use codec::{Event, Recorded};
pub use wire::DecodeError;

use crate::codec::request::{ParseError, Request};
use crate::config::Config;
use crate::io::{ConnId, Input, Listener, Output};
pub(crate) use playback::Playback;
use redact::RequestLine;

use crate::codec::proxy::Decoded;
pub(crate) use rng::{PlaybackRng, RecordingRng};
use wire::Writer;

/// The first bytes of every capture.
pub const MAGIC: &[u8; 24] = b"tokenizer-auth capture\n\0";
/// The format version this engine writes and reads.
pub const VERSION: u32 = 4;
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

    /// What the start of a connection made as a PROXY header, once
    /// decided, after `seen` bytes.
    pub(crate) fn proxy_header(&mut self, seen: usize, decoded: Decoded) {
        if self.body.is_some() {
            let seen = u32::try_from(seen).unwrap_or(u32::MAX);
            codec::request_line(&mut self.lines, &RequestLine::ProxyHeader { seen, decoded });
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
