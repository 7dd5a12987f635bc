//! Encoding of what a capture holds: the engine's configuration, the
//! inputs (with effect results and the records they carry), and the
//! outputs. Secrets are written redacted: a legacy plaintext password as an
//! empty one, an output's secret fields as `[redacted]` (outputs are kept
//! as their `Debug` text, in which every secret type hides itself).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use chrono::{DateTime, TimeDelta, Utc};

use super::redact::{MASK, RECORDED_INVALID, RequestLine};
use super::wire::{DecodeError, Reader, Writer};
use crate::codec::proxy::{Cidr, Decoded, ProxyHeader};
use crate::codec::request::ParseError;
use crate::config::Config;
use crate::counters::{Counter, CounterKey};
use crate::device::Mac;
use crate::effect::{EffectId, EffectResult};
use crate::io::{ConnId, Listener, Output};
use crate::limits::{Limits, Window};
use crate::passcode::{PasscodeKey, PasscodePolicy, PasscodeRecord, StoredPasscode};
use crate::password::PasswordHash;
use crate::secret::Secret;
use crate::server_key::{Fingerprint, ServerKey};
use crate::session::SessionPolicy;
use crate::store::{RotationRecord, SessionRecord, Snapshot, UserRecord};
use crate::token::{MasterToken, TokenTag};

/// An input as recorded (owning its bytes).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// [`crate::Input::Opened`].
    Opened {
        /// Which connection.
        conn: ConnId,
        /// Its peer.
        peer: IpAddr,
        /// Its listener.
        listener: Listener,
    },
    /// [`crate::Input::Received`], masked: only the bytes that frame lines
    /// are kept.
    Received {
        /// Which connection.
        conn: ConnId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// [`crate::Input::Closed`].
    Closed {
        /// Which connection.
        conn: ConnId,
    },
    /// [`crate::Input::Completed`].
    Completed {
        /// Which effect.
        id: EffectId,
        /// Its result.
        result: EffectResult,
    },
    /// [`crate::Input::Timeout`].
    Timeout,
    /// [`crate::Input::Failed`].
    Failed {
        /// Which connection.
        conn: ConnId,
    },
    /// [`crate::Input::Sent`].
    Sent {
        /// Which connection.
        conn: ConnId,
        /// How many bytes the socket took.
        bytes: u64,
    },
    /// [`crate::Input::Shutdown`].
    Shutdown,
}

/// An output as recorded and compared.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Recorded {
    /// Bytes sent, exactly.
    Transmit(ConnId, Vec<u8>),
    /// A close.
    Close(ConnId),
    /// An effect, as its `Debug` text (secrets show as `[redacted]`).
    Perform(EffectId, String),
    /// A half-close.
    HalfClose(ConnId),
    /// The end of a shutdown.
    Stopped,
}

impl Recorded {
    /// The recorded form of an output.
    pub fn of(output: &Output) -> Recorded {
        match output {
            Output::Transmit { conn, bytes } => Recorded::Transmit(*conn, bytes.clone()),
            Output::Close { conn } => Recorded::Close(*conn),
            Output::Perform { id, effect } => Recorded::Perform(*id, format!("{effect:?}")),
            Output::HalfClose { conn } => Recorded::HalfClose(*conn),
            Output::Stopped => Recorded::Stopped,
        }
    }
}

pub(crate) fn time(w: &mut Writer, t: DateTime<Utc>) {
    w.i64(t.timestamp());
    w.u32(t.timestamp_subsec_nanos());
}

/// The last instant a capture may name: the end of year 9999. Times come
/// from clocks; keeping them there keeps the engine's time arithmetic far
/// from chrono's limits.
const LAST_SECOND: i64 = 253_402_300_799;

pub(crate) fn read_time(r: &mut Reader<'_>) -> Result<DateTime<Utc>, DecodeError> {
    let secs = r.i64()?;
    let nanos = r.u32()?;
    if !(0..=LAST_SECOND).contains(&secs) {
        return Err(DecodeError::Invalid("time (before 1970 or after 9999)"));
    }
    DateTime::from_timestamp(secs, nanos).ok_or(DecodeError::Invalid("time"))
}

fn delta(w: &mut Writer, d: TimeDelta) {
    w.i64(d.num_nanoseconds().unwrap_or(i64::MAX));
}

fn read_delta(r: &mut Reader<'_>) -> Result<TimeDelta, DecodeError> {
    Ok(TimeDelta::nanoseconds(r.i64()?))
}

fn ip(w: &mut Writer, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            w.u8(4);
            w.buf.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            w.u8(6);
            w.buf.extend_from_slice(&v6.octets());
        }
    }
}

fn read_ip(r: &mut Reader<'_>) -> Result<IpAddr, DecodeError> {
    match r.u8()? {
        4 => Ok(IpAddr::V4(Ipv4Addr::from(r.fixed::<4>()?))),
        6 => Ok(IpAddr::V6(Ipv6Addr::from(r.fixed::<16>()?))),
        _ => Err(DecodeError::Invalid("address family")),
    }
}

fn listener(w: &mut Writer, l: Listener) {
    w.u8(match l {
        Listener::Native => 0,
        Listener::LegacyPasscode => 1,
        Listener::LegacyLogin => 2,
    });
}

fn read_listener(r: &mut Reader<'_>) -> Result<Listener, DecodeError> {
    match r.u8()? {
        0 => Ok(Listener::Native),
        1 => Ok(Listener::LegacyPasscode),
        2 => Ok(Listener::LegacyLogin),
        _ => Err(DecodeError::Invalid("listener")),
    }
}

fn usize_(w: &mut Writer, v: usize) {
    w.u64(v as u64);
}

fn read_usize(r: &mut Reader<'_>) -> Result<usize, DecodeError> {
    usize::try_from(r.u64()?).map_err(|_| DecodeError::Invalid("size"))
}

fn password(w: &mut Writer, p: &PasswordHash) {
    match p {
        PasswordHash::Phc(phc) => {
            w.u8(0);
            w.str(phc);
        }
        // Never written: a plaintext password stays out of the capture.
        PasswordHash::Plain(_) => w.u8(1),
    }
}

fn read_password(r: &mut Reader<'_>) -> Result<PasswordHash, DecodeError> {
    match r.u8()? {
        0 => Ok(PasswordHash::Phc(r.string()?)),
        1 => Ok(PasswordHash::Plain(Secret::default())),
        _ => Err(DecodeError::Invalid("password")),
    }
}

fn window(w: &mut Writer, win: &Window) {
    w.u32(win.max);
    delta(w, win.period);
}

fn read_window(r: &mut Reader<'_>) -> Result<Window, DecodeError> {
    Ok(Window { max: r.u32()?, period: read_delta(r)? })
}

/// Writes the engine configuration a capture was made with. The server
/// key is never written: only its fingerprint, last, so that replay can
/// tell whether it was given the right key.
pub(crate) fn config(w: &mut Writer, c: &Config) {
    delta(w, c.passcode.lifetime);
    w.u32(c.passcode.max_guesses);
    delta(w, c.session.token_ttl);
    delta(w, c.session.max_age);
    delta(w, c.session.renew_grace);
    let l = &c.limits;
    for win in [&l.passcode_requests_per_email, &l.passcode_requests_per_ip, &l.failures_per_email, &l.failures_per_ip]
    {
        window(w, win);
    }
    w.u32(l.max_consecutive_failures);
    delta(w, l.lockout);
    w.u8(l.ipv6_prefix);
    usize_(w, c.max_line);
    delta(w, c.idle_timeout);
    delta(w, c.partial_line_timeout);
    delta(w, c.legacy_wait);
    usize_(w, c.max_connections);
    usize_(w, c.max_backlog);
    delta(w, c.write_timeout);
    delta(w, c.close_linger);
    delta(w, c.shutdown_grace);
    usize_(w, c.max_pipeline);
    usize_(w, c.max_password_checks);
    password(w, &c.dummy_password);
    w.u32(u32::try_from(c.proxy_protocol_from.len()).unwrap_or(u32::MAX));
    for block in &c.proxy_protocol_from {
        ip(w, block.addr);
        w.u8(block.prefix);
    }
    w.buf.extend_from_slice(&c.server_key.fingerprint().0);
}

fn read_blocks(r: &mut Reader<'_>) -> Result<Vec<Cidr>, DecodeError> {
    let count = r.u32()?;
    let mut blocks = Vec::new();
    for _ in 0..count {
        let (addr, prefix) = (read_ip(r)?, r.u8()?);
        let block = Cidr::parse(&format!("{addr}/{prefix}")).ok_or(DecodeError::Invalid("address block"))?;
        blocks.push(block);
    }
    Ok(blocks)
}

/// The recorded configuration, with the placeholder key, and the
/// fingerprint of the key it was recorded with.
pub(crate) fn read_config(r: &mut Reader<'_>) -> Result<(Config, Fingerprint), DecodeError> {
    let passcode = PasscodePolicy { lifetime: read_delta(r)?, max_guesses: r.u32()? };
    let session = SessionPolicy { token_ttl: read_delta(r)?, max_age: read_delta(r)?, renew_grace: read_delta(r)? };
    let limits = Limits {
        passcode_requests_per_email: read_window(r)?,
        passcode_requests_per_ip: read_window(r)?,
        failures_per_email: read_window(r)?,
        failures_per_ip: read_window(r)?,
        max_consecutive_failures: r.u32()?,
        lockout: read_delta(r)?,
        ipv6_prefix: r.u8()?,
    };
    let config = Config {
        passcode,
        session,
        limits,
        max_line: read_usize(r)?,
        idle_timeout: read_delta(r)?,
        partial_line_timeout: read_delta(r)?,
        legacy_wait: read_delta(r)?,
        max_connections: read_usize(r)?,
        max_backlog: read_usize(r)?,
        write_timeout: read_delta(r)?,
        close_linger: read_delta(r)?,
        shutdown_grace: read_delta(r)?,
        max_pipeline: read_usize(r)?,
        max_password_checks: read_usize(r)?,
        dummy_password: read_password(r)?,
        proxy_protocol_from: read_blocks(r)?,
        server_key: ServerKey::default(),
    };
    let fingerprint = Fingerprint(r.fixed()?);
    config.validate().map_err(|_| DecodeError::Invalid("configuration (a setting out of range)"))?;
    Ok((config, fingerprint))
}

fn counter_key(w: &mut Writer, k: &CounterKey) {
    match k {
        CounterKey::PasscodeRequestsByEmail(e) => (w.u8(0), w.str(e)),
        CounterKey::PasscodeRequestsByIp(a) => (w.u8(1), ip(w, *a)),
        CounterKey::FailuresByEmail(e) => (w.u8(2), w.str(e)),
        CounterKey::FailuresByIp(a) => (w.u8(3), ip(w, *a)),
        CounterKey::FailureStreak(e) => (w.u8(4), w.str(e)),
    };
}

fn read_counter_key(r: &mut Reader<'_>) -> Result<CounterKey, DecodeError> {
    Ok(match r.u8()? {
        0 => CounterKey::PasscodeRequestsByEmail(r.string()?),
        1 => CounterKey::PasscodeRequestsByIp(read_ip(r)?),
        2 => CounterKey::FailuresByEmail(r.string()?),
        3 => CounterKey::FailuresByIp(read_ip(r)?),
        4 => CounterKey::FailureStreak(r.string()?),
        _ => return Err(DecodeError::Invalid("counter")),
    })
}

fn snapshot(w: &mut Writer, s: &Snapshot) {
    match &s.user {
        Some(u) => {
            w.u8(1);
            w.str(&u.email);
            w.str(&u.phone);
            password(w, &u.password);
        }
        None => w.u8(0),
    }
    match &s.passcode {
        Some(p) => {
            w.u8(1);
            w.str(&p.key.email);
            w.buf.extend_from_slice(&p.key.mac.octets());
            ip(w, p.key.ip);
            w.str(&p.phone);
            w.str(&p.code.to_column());
            time(w, p.expires_at);
            w.u32(p.attempts);
        }
        None => w.u8(0),
    }
    match &s.session {
        Some(x) => {
            w.u8(1);
            w.buf.extend_from_slice(x.master.as_bytes());
            w.str(&x.email);
            w.buf.extend_from_slice(&x.mac.octets());
            time(w, x.started_at);
            time(w, x.expires_at);
        }
        None => w.u8(0),
    }
    match &s.rotation {
        Some(x) => {
            w.u8(1);
            w.buf.extend_from_slice(x.tag.as_bytes());
            w.buf.extend_from_slice(x.master.as_bytes());
            w.str(&x.email);
            w.buf.extend_from_slice(&x.mac.octets());
            time(w, x.started_at);
            time(w, x.rotated_at);
        }
        None => w.u8(0),
    }
    w.u32(u32::try_from(s.counters.len()).unwrap_or(u32::MAX));
    for (key, c) in &s.counters {
        counter_key(w, key);
        time(w, c.since);
        w.u32(c.count);
        time(w, c.last);
    }
}

fn read_snapshot(r: &mut Reader<'_>) -> Result<Snapshot, DecodeError> {
    let user = match r.bool()? {
        true => Some(UserRecord { email: r.string()?, phone: r.string()?, password: read_password(r)? }),
        false => None,
    };
    let passcode = match r.bool()? {
        true => Some(PasscodeRecord {
            key: PasscodeKey { email: r.string()?, mac: Mac::from_octets(r.fixed()?), ip: read_ip(r)? },
            phone: r.string()?,
            code: StoredPasscode::from_column(&r.string()?),
            expires_at: read_time(r)?,
            attempts: r.u32()?,
        }),
        false => None,
    };
    let session = match r.bool()? {
        true => Some(SessionRecord {
            master: MasterToken::from_bytes(r.fixed()?),
            email: r.string()?,
            mac: Mac::from_octets(r.fixed()?),
            started_at: read_time(r)?,
            expires_at: read_time(r)?,
        }),
        false => None,
    };
    let rotation = match r.bool()? {
        true => Some(RotationRecord {
            tag: TokenTag::from_bytes(r.fixed()?),
            master: MasterToken::from_bytes(r.fixed()?),
            email: r.string()?,
            mac: Mac::from_octets(r.fixed()?),
            started_at: read_time(r)?,
            rotated_at: read_time(r)?,
        }),
        false => None,
    };
    let n = r.u32()?;
    let mut counters = Vec::new();
    for _ in 0..n {
        let key = read_counter_key(r)?;
        counters.push((key, Counter { since: read_time(r)?, count: r.u32()?, last: read_time(r)? }));
    }
    Ok(Snapshot { user, passcode, session, rotation, counters })
}

fn result(w: &mut Writer, res: &EffectResult) {
    match res {
        EffectResult::Read(s) => {
            w.u8(0);
            snapshot(w, s);
        }
        EffectResult::Committed => w.u8(1),
        EffectResult::Conflict => w.u8(2),
        EffectResult::Verified(ok) => {
            w.u8(3);
            w.bool(*ok);
        }
        EffectResult::Hashed(p) => {
            w.u8(4);
            password(w, p);
        }
        EffectResult::Sent => w.u8(5),
        EffectResult::Failed => w.u8(6),
    }
}

fn read_result(r: &mut Reader<'_>) -> Result<EffectResult, DecodeError> {
    Ok(match r.u8()? {
        0 => EffectResult::Read(Box::new(read_snapshot(r)?)),
        1 => EffectResult::Committed,
        2 => EffectResult::Conflict,
        3 => EffectResult::Verified(r.bool()?),
        4 => EffectResult::Hashed(read_password(r)?),
        5 => EffectResult::Sent,
        6 => EffectResult::Failed,
        _ => return Err(DecodeError::Invalid("effect result")),
    })
}

pub(crate) fn event(w: &mut Writer, e: &Event) {
    match e {
        Event::Opened { conn, peer, listener: l } => {
            w.u8(0);
            w.u64(conn.0);
            ip(w, *peer);
            listener(w, *l);
        }
        Event::Received { conn, bytes }
            if bytes.len() <= MAX_MASKED && bytes.iter().all(|&b| b == MASK || framing(b)) =>
        {
            w.u8(5);
            w.u64(conn.0);
            w.u32(bytes.len() as u32);
            let kept = bytes.iter().filter(|&&b| b != MASK).count();
            w.u32(kept as u32);
            for (at, &b) in bytes.iter().enumerate().filter(|(_, b)| **b != MASK) {
                w.u32(at as u32);
                w.u8(b);
            }
        }
        Event::Received { conn, bytes } => {
            w.u8(1);
            w.u64(conn.0);
            w.bytes(bytes);
        }
        Event::Closed { conn } => {
            w.u8(2);
            w.u64(conn.0);
        }
        Event::Completed { id, result: res } => {
            w.u8(3);
            w.u64(id.0);
            result(w, res);
        }
        Event::Timeout => w.u8(4),
        Event::Failed { conn } => {
            w.u8(6);
            w.u64(conn.0);
        }
        Event::Sent { conn, bytes } => {
            w.u8(7);
            w.u64(conn.0);
            w.u64(*bytes);
        }
        Event::Shutdown => w.u8(8),
    }
}

/// The longest masked chunk written as its framing bytes alone: what a
/// runtime reads at once. It also bounds what reading one allocates.
const MAX_MASKED: usize = 64 * 1024;

/// Whether a byte is one the masking keeps.
fn framing(b: u8) -> bool {
    matches!(b, b'\n' | b'\r' | b'|')
}

/// A masked chunk from its length and the places of its framing bytes.
fn read_masked(r: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    let len = r.u32()? as usize;
    let kept = r.u32()? as usize;
    if len > MAX_MASKED || kept > len {
        return Err(DecodeError::Invalid("masked bytes"));
    }
    let mut bytes = vec![MASK; len];
    let mut next = 0;
    for _ in 0..kept {
        let at = r.u32()? as usize;
        let b = r.u8()?;
        if at < next || at >= len || !framing(b) {
            return Err(DecodeError::Invalid("masked bytes"));
        }
        bytes[at] = b;
        next = at + 1;
    }
    Ok(bytes)
}

pub(crate) fn read_event(r: &mut Reader<'_>) -> Result<Event, DecodeError> {
    Ok(match r.u8()? {
        0 => Event::Opened { conn: ConnId(r.u64()?), peer: read_ip(r)?, listener: read_listener(r)? },
        1 => Event::Received { conn: ConnId(r.u64()?), bytes: r.bytes()?.to_vec() },
        2 => Event::Closed { conn: ConnId(r.u64()?) },
        3 => Event::Completed { id: EffectId(r.u64()?), result: read_result(r)? },
        4 => Event::Timeout,
        5 => Event::Received { conn: ConnId(r.u64()?), bytes: read_masked(r)? },
        6 => Event::Failed { conn: ConnId(r.u64()?) },
        7 => Event::Sent { conn: ConnId(r.u64()?), bytes: r.u64()? },
        8 => Event::Shutdown,
        _ => return Err(DecodeError::Invalid("input")),
    })
}

pub(crate) fn recorded(w: &mut Writer, o: &Recorded) {
    match o {
        Recorded::Transmit(conn, bytes) => {
            w.u8(0);
            w.u64(conn.0);
            w.bytes(bytes);
        }
        Recorded::Close(conn) => {
            w.u8(1);
            w.u64(conn.0);
        }
        Recorded::Perform(id, text) => {
            w.u8(2);
            w.u64(id.0);
            w.str(text);
        }
        Recorded::HalfClose(conn) => {
            w.u8(3);
            w.u64(conn.0);
        }
        Recorded::Stopped => w.u8(4),
    }
}

pub(crate) fn read_recorded(r: &mut Reader<'_>) -> Result<Recorded, DecodeError> {
    Ok(match r.u8()? {
        0 => Recorded::Transmit(ConnId(r.u64()?), r.bytes()?.to_vec()),
        1 => Recorded::Close(ConnId(r.u64()?)),
        2 => Recorded::Perform(EffectId(r.u64()?), r.string()?),
        3 => Recorded::HalfClose(ConnId(r.u64()?)),
        4 => Recorded::Stopped,
        _ => return Err(DecodeError::Invalid("output")),
    })
}

fn parse_error(w: &mut Writer, e: ParseError) {
    w.u8(match e {
        ParseError::Empty => 0,
        ParseError::NotUtf8 => 1,
        ParseError::ControlCharacter => 2,
        ParseError::Fields => 3,
        ParseError::Mac => 4,
        ParseError::Email => 5,
        ParseError::Phone => 6,
    });
}

fn read_parse_error(r: &mut Reader<'_>) -> Result<ParseError, DecodeError> {
    Ok(match r.u8()? {
        0 => ParseError::Empty,
        1 => ParseError::NotUtf8,
        2 => ParseError::ControlCharacter,
        3 => ParseError::Fields,
        4 => ParseError::Mac,
        5 => ParseError::Email,
        6 => ParseError::Phone,
        _ => return Err(DecodeError::Invalid("parse outcome")),
    })
}

pub(crate) fn request_line(w: &mut Writer, line: &RequestLine) {
    match line {
        RequestLine::Parsed(bytes) => {
            w.u8(0);
            w.bytes(bytes);
        }
        RequestLine::Malformed(why) => {
            w.u8(1);
            parse_error(w, *why);
        }
        RequestLine::ProxyHeader { seen, decoded } => {
            w.u8(2);
            w.u32(*seen);
            match decoded {
                Decoded::Header(ProxyHeader::Proxied(source), consumed) => {
                    w.u8(0);
                    ip(w, source.ip());
                    w.u32(u32::from(source.port()));
                    w.u32(u32::try_from(*consumed).unwrap_or(u32::MAX));
                }
                Decoded::Header(ProxyHeader::Local, consumed) => {
                    w.u8(1);
                    w.u32(u32::try_from(*consumed).unwrap_or(u32::MAX));
                }
                // Never recorded: replay finds it by length.
                Decoded::Incomplete | Decoded::Invalid(_) => w.u8(2),
            }
        }
    }
}

pub(crate) fn read_request_line(r: &mut Reader<'_>) -> Result<RequestLine, DecodeError> {
    Ok(match r.u8()? {
        0 => RequestLine::Parsed(r.bytes()?.to_vec()),
        1 => RequestLine::Malformed(read_parse_error(r)?),
        2 => {
            let seen = r.u32()?;
            let decoded = match r.u8()? {
                0 => {
                    let (addr, port) = (read_ip(r)?, r.u32()?);
                    let port = u16::try_from(port).map_err(|_| DecodeError::Invalid("port"))?;
                    Decoded::Header(ProxyHeader::Proxied(SocketAddr::new(addr, port)), r.u32()? as usize)
                }
                1 => Decoded::Header(ProxyHeader::Local, r.u32()? as usize),
                2 => Decoded::Invalid(RECORDED_INVALID),
                _ => return Err(DecodeError::Invalid("PROXY header outcome")),
            };
            RequestLine::ProxyHeader { seen, decoded }
        }
        _ => return Err(DecodeError::Invalid("request line")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(bytes: &[u8]) -> (usize, Event) {
        let mut w = Writer::default();
        event(&mut w, &Event::Received { conn: ConnId(7), bytes: bytes.to_vec() });
        let read = read_event(&mut Reader::new(&w.buf)).unwrap();
        (w.buf.len(), read)
    }

    #[test]
    fn masked_bytes_are_written_as_their_framing_bytes() {
        let masked = [&[MASK; 90][..], b"\n", &[MASK; 40], b"|\r\n"].concat();
        let (size, read) = round_trip(&masked);
        assert_eq!(read, Event::Received { conn: ConnId(7), bytes: masked });
        assert_eq!(size, 1 + 8 + 4 + 4 + 4 * 5);
        // Bytes that are not a mask (or too many) are written as they are.
        for other in [b"plain text\n".to_vec(), vec![MASK; MAX_MASKED + 1]] {
            let (size, read) = round_trip(&other);
            assert_eq!(size, 1 + 8 + 4 + other.len());
            assert_eq!(read, Event::Received { conn: ConnId(7), bytes: other });
        }
    }

    #[test]
    fn bad_masked_bytes_are_refused() {
        let encode = |len: u32, kept: &[(u32, u8)]| {
            let mut w = Writer::default();
            w.u8(5);
            w.u64(1);
            w.u32(len);
            w.u32(kept.len() as u32);
            for &(at, b) in kept {
                w.u32(at);
                w.u8(b);
            }
            w.buf
        };
        for bad in [
            encode(MAX_MASKED as u32 + 1, &[]),
            encode(4, &[(4, b'\n')]),
            encode(4, &[(2, b'\n'), (1, b'\n')]),
            encode(4, &[(1, b'x')]),
            encode(4, &[(0, b'\n'), (1, b'\n'), (2, b'\n'), (3, b'\n'), (3, b'\n')]),
        ] {
            assert!(read_event(&mut Reader::new(&bad)).is_err());
        }
        assert!(read_event(&mut Reader::new(&encode(3, &[(0, b'|'), (2, b'\r')]))).is_ok());
    }
}
