//! The load generator: mio event loops (one per client thread) that keep
//! `connections` connections busy for a warm-up and a measured window.
//!
//! - **native**: each connection keeps `depth` token requests in flight
//!   (`TOKEN|MAC|get`, a session picked at random per request), refilling as
//!   replies come back; replies come in request order, so each is matched
//!   with its send time.
//! - **renew**: the same, but each connection owns a disjoint set of
//!   sessions and uses them round robin, taking the new token of every
//!   `renew|<token>` reply; with sessions seeded expired, every request is a
//!   rotation (a committed write). A connection needs more sessions than its
//!   depth, so no two requests in flight share one.
//! - **legacy**: each connection slot connects, writes one request with no
//!   terminator, reads the reply to end of stream, and starts over; the
//!   latency is from the connect to the end of the reply.
//!
//! Optionally a **login storm** runs alongside: login requests at a fixed
//! rate, open loop (sent on schedule whatever the replies do), each on a
//! connection of its own as a device would (connect, one line, one reply
//! line, close), each one's latency measured from its scheduled time, so a
//! server that falls behind cannot hide it. After the window the storm's
//! outstanding logins are waited for (up to [`STORM_DRAIN`]); what is still
//! unanswered then is reported.
//!
//! Only replies received inside the measured window count towards
//! throughput and the token-check latency histogram.
//!
//! With a TLS configuration, native and renew connections speak TLS (the
//! handshake is done before the run starts, so it is not measured).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::stats::{Kinds, ReplyKind, histogram, record};
use crate::tokens::{ENTRY, SplitMix, Tokens};

/// How long after the window the storm's outstanding logins are awaited.
pub(crate) const STORM_DRAIN: Duration = Duration::from_secs(6);

/// The most bytes of a legacy reply kept (the old clients read 500).
const LEGACY_REPLY_CAP: usize = 4096;

/// What the connections send.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// Pipelined token checks on random sessions.
    Native,
    /// Pipelined token requests that rotate expired sessions.
    Renew,
    /// One request per connection.
    Legacy,
}

impl Mode {
    /// The name in output.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Renew => "renew",
            Mode::Legacy => "legacy",
        }
    }
}

/// The login storm.
#[derive(Clone, Debug)]
pub(crate) struct StormPlan {
    /// The native listener the logins go to.
    pub(crate) addr: SocketAddr,
    /// Logins per second.
    pub(crate) per_sec: f64,
}

/// One load run.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// Where the requests go.
    pub(crate) addr: SocketAddr,
    /// What they are.
    pub(crate) mode: Mode,
    /// Concurrent connections.
    pub(crate) connections: usize,
    /// Requests in flight per connection (native and renew).
    pub(crate) depth: usize,
    /// Run before measuring.
    pub(crate) warmup: Duration,
    /// The measured window.
    pub(crate) duration: Duration,
    /// Client event-loop threads.
    pub(crate) threads: usize,
    /// The sessions (native and renew).
    pub(crate) tokens: Arc<Tokens>,
    /// The request field of a token request (`get`).
    pub(crate) verb: String,
    /// The legacy request, sent as is.
    pub(crate) legacy_request: Vec<u8>,
    /// The login storm, if any.
    pub(crate) storm: Option<StormPlan>,
    /// Seeds the random picks of sessions.
    pub(crate) seed: u64,
    /// TLS on native and renew connections (the server's name must be
    /// `localhost`).
    pub(crate) tls: Option<Arc<ClientConfig>>,
}

/// Counters the progress printer reads while the run goes on.
#[derive(Default, Debug)]
pub(crate) struct Progress {
    /// Replies (or legacy exchanges) received, warm-up included.
    pub(crate) replies: AtomicU64,
    /// Storm logins answered.
    pub(crate) logins: AtomicU64,
    /// Connection failures.
    pub(crate) errors: AtomicU64,
}

/// The instants of one run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeline {
    /// Load starts.
    pub(crate) start: Instant,
    /// Measuring starts.
    pub(crate) warm: Instant,
    /// Measuring ends; no new requests after it.
    pub(crate) end: Instant,
}

impl Timeline {
    /// The timeline of `plan` starting now.
    pub(crate) fn new(plan: &Plan) -> Timeline {
        let start = Instant::now();
        let warm = start + plan.warmup;
        Timeline { start, warm, end: warm + plan.duration }
    }

    fn measured(&self, at: Instant) -> bool {
        at >= self.warm && at < self.end
    }
}

/// What the storm's logins got.
#[derive(Clone, Debug)]
pub(crate) struct StormTally {
    /// Logins sent.
    pub(crate) sent: u64,
    /// Replies by kind.
    pub(crate) kinds: Kinds,
    /// Latency from each login's scheduled time to its reply.
    pub(crate) hist: Histogram<u64>,
    /// Logins whose connection failed (refused, reset, closed with no
    /// reply).
    pub(crate) failed: u64,
}

impl StormTally {
    fn new() -> StormTally {
        StormTally { sent: 0, kinds: Kinds::default(), hist: histogram(), failed: 0 }
    }

    /// Logins with no reply at all.
    pub(crate) fn unanswered(&self) -> u64 {
        self.sent.saturating_sub(self.kinds.total())
    }
}

/// What a run got.
#[derive(Clone, Debug)]
pub(crate) struct Tally {
    /// Replies by kind, inside the window.
    pub(crate) kinds: Kinds,
    /// Their latencies.
    pub(crate) hist: Histogram<u64>,
    /// Connection failures (connect, read or write errors, unexpected
    /// ends of stream, replies nobody asked for), all run long.
    pub(crate) errors: u64,
    /// The storm, if there was one.
    pub(crate) storm: Option<StormTally>,
}

impl Tally {
    fn new() -> Tally {
        Tally { kinds: Kinds::default(), hist: histogram(), errors: 0, storm: None }
    }

    fn merge(&mut self, other: Tally) {
        self.kinds.merge(&other.kinds);
        let _ = self.hist.add(&other.hist);
        self.errors += other.errors;
        if other.storm.is_some() {
            self.storm = other.storm;
        }
    }
}

/// Runs the plan on `plan.threads` threads and merges what they counted.
pub(crate) fn run(plan: &Plan, timeline: Timeline, progress: &Arc<Progress>) -> Result<Tally, String> {
    if matches!(plan.mode, Mode::Native | Mode::Renew) && plan.tokens.is_empty() {
        return Err(format!("{} mode needs sessions (--tokens)", plan.mode.name()));
    }
    if plan.mode == Mode::Renew && plan.tokens.len() / plan.connections <= plan.depth {
        return Err(format!(
            "renew mode needs more sessions per connection than the depth: {} sessions, {} connections, depth {}",
            plan.tokens.len(),
            plan.connections,
            plan.depth
        ));
    }
    let threads = plan.threads.clamp(1, plan.connections.max(1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let plan = plan.clone();
            let progress = Arc::clone(progress);
            std::thread::Builder::new()
                .name(format!("client-{t}"))
                .spawn(move || Client::new(&plan, t, threads, timeline, progress).and_then(Client::run))
                .map_err(|e| format!("cannot start a client thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut tally = Tally::new();
    for handle in handles {
        tally.merge(handle.join().map_err(|_| "a client thread panicked".to_owned())??);
    }
    Ok(tally)
}

/// A pipelined native connection (token checks).
struct Line {
    stream: TcpStream,
    out: Vec<u8>,
    written: usize,
    partial: Vec<u8>,
    /// Send time and session slot of each request in flight.
    sent: VecDeque<(Instant, u32)>,
    /// Renew mode: this connection's sessions, [`ENTRY`] bytes each.
    slots: Vec<u8>,
    next_slot: usize,
    dead: bool,
    /// TLS between the requests and the socket, if on.
    tls: Option<Box<ClientConnection>>,
}

/// One exchange per connection: a legacy request (the slot starts over
/// when it is done) or a storm login (the slot is freed).
struct Shot {
    stream: Option<TcpStream>,
    /// Connect time (legacy) or scheduled time (storm).
    started: Instant,
    connected: bool,
    request: Vec<u8>,
    reply: Vec<u8>,
    storm: bool,
}

enum Conn {
    Line(Line),
    Shot(Shot),
    Free,
}

struct Client {
    poll: Poll,
    conns: Vec<Conn>,
    /// Free slots of `conns` (storm logins come and go).
    free: Vec<usize>,
    mode: Mode,
    depth: usize,
    addr: SocketAddr,
    tokens: Arc<Tokens>,
    verb: Vec<u8>,
    legacy_request: Vec<u8>,
    rng: SplitMix,
    timeline: Timeline,
    progress: Arc<Progress>,
    tally: Tally,
    /// The storm's listener and rate (0: no storm on this thread).
    storm_addr: Option<SocketAddr>,
    storm_rate: f64,
    /// Storm logins in flight.
    storm_active: usize,
    /// Legacy slots waiting to reconnect after a failed connect.
    idle: Vec<usize>,
    buf: Vec<u8>,
}

/// Connects, and with TLS completes the handshake, blocking; the stream
/// is then non-blocking.
fn connect_blocking(
    addr: SocketAddr,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<(TcpStream, Option<Box<ClientConnection>>), String> {
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("cannot configure a socket: {e}"))?;
    let tls = match tls {
        None => None,
        Some(config) => {
            let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let mut conn = ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?;
            while conn.is_handshaking() {
                conn.complete_io(&mut stream).map_err(|e| format!("TLS with {addr} failed: {e}"))?;
            }
            Some(Box::new(conn))
        }
    };
    stream.set_nonblocking(true).map_err(|e| format!("cannot configure a socket: {e}"))?;
    Ok((TcpStream::from_std(stream), tls))
}

impl Client {
    fn new(
        plan: &Plan,
        thread: usize,
        threads: usize,
        timeline: Timeline,
        progress: Arc<Progress>,
    ) -> Result<Client, String> {
        let poll = Poll::new().map_err(|e| format!("cannot create a poll: {e}"))?;
        let mut client = Client {
            poll,
            conns: Vec::new(),
            free: Vec::new(),
            mode: plan.mode,
            depth: plan.depth.max(1),
            addr: plan.addr,
            tokens: Arc::clone(&plan.tokens),
            verb: plan.verb.as_bytes().to_vec(),
            legacy_request: plan.legacy_request.clone(),
            rng: SplitMix::new(plan.seed ^ (thread as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d)),
            timeline,
            progress,
            tally: Tally::new(),
            storm_addr: None,
            storm_rate: 0.0,
            storm_active: 0,
            idle: Vec::new(),
            buf: vec![0; 64 * 1024],
        };
        for c in (0..plan.connections).filter(|c| c % threads == thread) {
            let conn = match plan.mode {
                Mode::Native | Mode::Renew => {
                    let slots = if plan.mode == Mode::Renew {
                        (c..plan.tokens.len())
                            .step_by(plan.connections)
                            .flat_map(|i| plan.tokens.entry(i))
                            .copied()
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let (mut stream, tls) = connect_blocking(plan.addr, plan.tls.as_ref())?;
                    client
                        .poll
                        .registry()
                        .register(&mut stream, Token(client.conns.len()), Interest::READABLE | Interest::WRITABLE)
                        .map_err(|e| format!("cannot watch a socket: {e}"))?;
                    Conn::Line(Line {
                        stream,
                        out: Vec::with_capacity(4096),
                        written: 0,
                        partial: Vec::new(),
                        sent: VecDeque::with_capacity(client.depth * 2),
                        slots,
                        next_slot: 0,
                        dead: false,
                        tls,
                    })
                }
                Mode::Legacy => Conn::Shot(Shot {
                    stream: None,
                    started: timeline.start,
                    connected: false,
                    request: client.legacy_request.clone(),
                    reply: Vec::new(),
                    storm: false,
                }),
            };
            client.conns.push(conn);
        }
        if thread == 0
            && let Some(storm) = &plan.storm
            && storm.per_sec > 0.0
        {
            client.storm_addr = Some(storm.addr);
            client.storm_rate = storm.per_sec;
            client.tally.storm = Some(StormTally::new());
        }
        Ok(client)
    }

    fn run(mut self) -> Result<Tally, String> {
        let mut events = Events::with_capacity(1024);
        for key in 0..self.conns.len() {
            match &self.conns[key] {
                Conn::Line(_) => self.refill(key, Instant::now()),
                Conn::Shot(_) => self.open_shot(key),
                Conn::Free => {}
            }
        }
        loop {
            let now = Instant::now();
            if now < self.timeline.end {
                self.send_storm(now);
                for key in std::mem::take(&mut self.idle) {
                    self.open_shot(key);
                }
            } else if self.storm_active == 0 || now >= self.timeline.end + STORM_DRAIN {
                break;
            }
            let timeout = self.timeout(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll failed: {e}"));
            }
            for event in events.iter() {
                let key = event.token().0;
                match self.conns.get(key) {
                    Some(Conn::Line(_)) => self.on_line(key),
                    Some(Conn::Shot(_)) => self.on_shot(key),
                    _ => {}
                }
            }
        }
        if let Some(storm) = self.tally.storm.as_mut() {
            // Still waiting at the end of the drain: unanswered.
            storm.failed += self.storm_active as u64;
        }
        Ok(self.tally)
    }

    /// The poll timeout: until the next storm login is due, or a short beat
    /// so the end of the window (and of the drain) is noticed.
    fn timeout(&self, now: Instant) -> Duration {
        let beat = Duration::from_millis(if self.idle.is_empty() { 20 } else { 1 });
        match &self.tally.storm {
            Some(storm) if now < self.timeline.end => {
                let next = self.timeline.start + Duration::from_secs_f64(storm.sent as f64 / self.storm_rate);
                next.saturating_duration_since(now).min(beat)
            }
            _ => beat,
        }
    }

    /// Starts the storm logins that are due, each on its own connection and
    /// stamped with its scheduled time.
    fn send_storm(&mut self, now: Instant) {
        let Some(addr) = self.storm_addr else { return };
        loop {
            let Some(storm) = self.tally.storm.as_mut() else { return };
            let due = self.timeline.start + Duration::from_secs_f64(storm.sent as f64 / self.storm_rate);
            if due > now {
                return;
            }
            let n = storm.sent;
            storm.sent += 1;
            // An unknown email and a wrong password: one password
            // verification (against the dummy hash), then `False`.
            let request = format!("02:00:00:00:00:01|storm{n}@bench.example|5550100|wrong horse|AAAAAA\n");
            let key = match self.free.pop() {
                Some(key) => key,
                None => {
                    self.conns.push(Conn::Free);
                    self.conns.len() - 1
                }
            };
            let mut shot = Shot {
                stream: None,
                started: due,
                connected: false,
                request: request.into_bytes(),
                reply: Vec::new(),
                storm: true,
            };
            if let Ok(mut stream) = TcpStream::connect(addr)
                && self
                    .poll
                    .registry()
                    .register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE)
                    .is_ok()
            {
                shot.stream = Some(stream);
            }
            if shot.stream.is_some() {
                self.conns[key] = Conn::Shot(shot);
                self.storm_active += 1;
            } else {
                storm.failed += 1;
                self.free.push(key);
            }
        }
    }

    /// Tops a token-check connection up to `depth` requests in flight.
    fn refill(&mut self, key: usize, now: Instant) {
        if now >= self.timeline.end {
            return;
        }
        let Some(Conn::Line(line)) = self.conns.get_mut(key) else { return };
        if line.dead {
            return;
        }
        let mut added = false;
        while line.sent.len() < self.depth {
            let slot = match self.mode {
                Mode::Renew => {
                    let count = line.slots.len() / ENTRY;
                    let slot = line.next_slot;
                    line.next_slot = (slot + 1) % count;
                    line.out.extend_from_slice(&line.slots[slot * ENTRY..(slot + 1) * ENTRY]);
                    slot
                }
                _ => {
                    let i = self.rng.below(self.tokens.len());
                    line.out.extend_from_slice(self.tokens.entry(i));
                    0
                }
            };
            line.out.push(b'|');
            line.out.extend_from_slice(&self.verb);
            line.out.push(b'\n');
            line.sent.push_back((now, slot as u32));
            added = true;
        }
        if added {
            self.flush(key);
        }
    }

    /// Writes what the socket takes.
    fn flush(&mut self, key: usize) {
        let Some(Conn::Line(line)) = self.conns.get_mut(key) else { return };
        if let Some(tls) = &mut line.tls {
            // All of it becomes records (rustls buffers them), then the
            // socket takes what it can.
            if tls.writer().write_all(&line.out[line.written..]).is_err() {
                self.fail_line(key);
                return;
            }
            line.out.clear();
            line.written = 0;
            while tls.wants_write() {
                match tls.write_tls(&mut line.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.fail_line(key);
                        return;
                    }
                }
            }
            return;
        }
        while line.written < line.out.len() {
            match line.stream.write(&line.out[line.written..]) {
                Ok(0) => {
                    self.fail_line(key);
                    return;
                }
                Ok(n) => line.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.fail_line(key);
                    return;
                }
            }
        }
        line.out.clear();
        line.written = 0;
    }

    fn fail_line(&mut self, key: usize) {
        if let Some(Conn::Line(line)) = self.conns.get_mut(key)
            && !line.dead
        {
            line.dead = true;
            let _ = self.poll.registry().deregister(&mut line.stream);
            self.tally.errors += 1;
            self.progress.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_line(&mut self, key: usize) {
        self.flush(key);
        loop {
            let Some(Conn::Line(line)) = self.conns.get_mut(key) else { return };
            if line.dead {
                return;
            }
            if line.tls.is_some() {
                match self.read_tls(key) {
                    Some(true) => continue,
                    Some(false) => break,
                    None => return,
                }
            }
            match line.stream.read(&mut self.buf) {
                Ok(0) => {
                    self.fail_line(key);
                    return;
                }
                Ok(n) => {
                    let at = Instant::now();
                    let buf = std::mem::take(&mut self.buf);
                    self.on_bytes(key, &buf[..n], at);
                    self.buf = buf;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.fail_line(key);
                    return;
                }
            }
        }
        self.refill(key, Instant::now());
    }

    /// One read of a TLS connection: records in, plaintext to
    /// [`Client::on_bytes`]. `Some(true)`: read again; `Some(false)`: the
    /// socket is drained; `None`: the connection failed.
    fn read_tls(&mut self, key: usize) -> Option<bool> {
        let Some(Conn::Line(line)) = self.conns.get_mut(key) else { return None };
        let tls = line.tls.as_mut()?;
        match tls.read_tls(&mut line.stream) {
            Ok(0) => {
                self.fail_line(key);
                return None;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Some(true),
            Err(_) => {
                self.fail_line(key);
                return None;
            }
        }
        if tls.process_new_packets().is_err() {
            self.fail_line(key);
            return None;
        }
        let at = Instant::now();
        let mut buf = std::mem::take(&mut self.buf);
        while let Some(Conn::Line(Line { tls: Some(tls), .. })) = self.conns.get_mut(key) {
            match tls.reader().read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.on_bytes(key, &buf[..n], at),
            }
        }
        self.buf = buf;
        Some(true)
    }

    /// Splits received bytes into reply lines.
    fn on_bytes(&mut self, key: usize, chunk: &[u8], at: Instant) {
        let mut start = 0;
        let mut replies = 0;
        let partial = match self.conns.get_mut(key) {
            Some(Conn::Line(line)) if !line.partial.is_empty() => Some(std::mem::take(&mut line.partial)),
            _ => None,
        };
        if let Some(mut partial) = partial {
            match chunk.iter().position(|&b| b == b'\n') {
                None => {
                    partial.extend_from_slice(chunk);
                    if let Some(Conn::Line(line)) = self.conns.get_mut(key) {
                        line.partial = partial;
                    }
                    return;
                }
                Some(i) => {
                    partial.extend_from_slice(&chunk[..i]);
                    self.on_reply(key, &partial, at);
                    start = i + 1;
                    replies += 1;
                }
            }
        }
        while let Some(i) = chunk[start..].iter().position(|&b| b == b'\n') {
            self.on_reply(key, &chunk[start..start + i], at);
            start += i + 1;
            replies += 1;
        }
        if replies > 0 {
            self.progress.replies.fetch_add(replies, Ordering::Relaxed);
        }
        if let Some(Conn::Line(line)) = self.conns.get_mut(key) {
            line.partial.extend_from_slice(&chunk[start..]);
        }
    }

    fn on_reply(&mut self, key: usize, reply: &[u8], at: Instant) {
        let Some(Conn::Line(line)) = self.conns.get_mut(key) else { return };
        let Some((sent, slot)) = line.sent.pop_front() else {
            // A reply nobody asked for.
            self.tally.errors += 1;
            return;
        };
        let kind = ReplyKind::of_line(reply);
        if kind == ReplyKind::Renew && self.mode == Mode::Renew && reply.len() >= 6 + 64 {
            let at_slot = slot as usize * ENTRY;
            if let Some(token) = line.slots.get_mut(at_slot..at_slot + 64) {
                token.copy_from_slice(&reply[6..70]);
            }
        }
        if self.timeline.measured(at) {
            self.tally.kinds.add(kind);
            record(&mut self.tally.hist, at.saturating_duration_since(sent));
        }
    }

    /// Starts a legacy exchange in slot `key`.
    fn open_shot(&mut self, key: usize) {
        let now = Instant::now();
        if now >= self.timeline.end {
            return;
        }
        let Some(Conn::Shot(shot)) = self.conns.get_mut(key) else { return };
        shot.stream = None;
        shot.connected = false;
        shot.reply.clear();
        shot.started = now;
        if let Ok(mut stream) = TcpStream::connect(self.addr)
            && self.poll.registry().register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE).is_ok()
        {
            shot.stream = Some(stream);
            return;
        }
        self.tally.errors += 1;
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        self.idle.push(key);
    }

    fn on_shot(&mut self, key: usize) {
        let Some(Conn::Shot(shot)) = self.conns.get_mut(key) else { return };
        let Some(stream) = shot.stream.as_mut() else { return };
        if !shot.connected {
            if let Ok(Some(_)) | Err(_) = stream.take_error() {
                self.shot_failed(key);
                return;
            }
            match stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => {
                    self.shot_failed(key);
                    return;
                }
            }
            shot.connected = true;
            let _ = stream.set_nodelay(true);
            match stream.write(&shot.request) {
                Ok(n) if n == shot.request.len() => {}
                _ => {
                    self.shot_failed(key);
                    return;
                }
            }
        }
        loop {
            let Some(Conn::Shot(shot)) = self.conns.get_mut(key) else { return };
            let Some(stream) = shot.stream.as_mut() else { return };
            match stream.read(&mut self.buf) {
                Ok(0) if shot.storm => {
                    // Closed before a whole reply line.
                    self.shot_failed(key);
                    return;
                }
                Ok(0) => {
                    let kind = ReplyKind::of_pickle(&shot.reply);
                    self.shot_done(key, kind);
                    return;
                }
                Ok(n) => {
                    let room = LEGACY_REPLY_CAP.saturating_sub(shot.reply.len());
                    shot.reply.extend_from_slice(&self.buf[..n.min(room)]);
                    if shot.storm
                        && let Some(end) = shot.reply.iter().position(|&b| b == b'\n')
                    {
                        let kind = ReplyKind::of_line(&shot.reply[..end]);
                        self.shot_done(key, kind);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.shot_failed(key);
                    return;
                }
            }
        }
    }

    /// An exchange got its whole reply.
    fn shot_done(&mut self, key: usize, kind: ReplyKind) {
        let at = Instant::now();
        let Some(Conn::Shot(shot)) = self.conns.get_mut(key) else { return };
        shot.stream = None;
        let latency = at.saturating_duration_since(shot.started);
        if shot.storm {
            if let Some(storm) = self.tally.storm.as_mut() {
                storm.kinds.add(kind);
                record(&mut storm.hist, latency);
            }
            self.progress.logins.fetch_add(1, Ordering::Relaxed);
            self.release(key);
            return;
        }
        if self.timeline.measured(at) {
            self.tally.kinds.add(kind);
            record(&mut self.tally.hist, latency);
        }
        self.progress.replies.fetch_add(1, Ordering::Relaxed);
        self.open_shot(key);
    }

    /// An exchange's connection failed.
    fn shot_failed(&mut self, key: usize) {
        let Some(Conn::Shot(shot)) = self.conns.get_mut(key) else { return };
        shot.stream = None;
        if shot.storm {
            if let Some(storm) = self.tally.storm.as_mut() {
                storm.failed += 1;
            }
            self.release(key);
            return;
        }
        self.tally.errors += 1;
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        self.idle.push(key);
    }

    /// Frees a storm login's slot.
    fn release(&mut self, key: usize) {
        self.conns[key] = Conn::Free;
        self.free.push(key);
        self.storm_active -= 1;
    }
}
