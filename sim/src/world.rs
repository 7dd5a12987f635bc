//! The simulated system: one server (an engine, as a runtime drives it),
//! its store and mail relay, the network, and the clients, all on one
//! virtual clock and driven by one queue of events. Every choice is drawn
//! from the seed, so a seed replays exactly.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};
use rand_core::Rng;
use tokenizer_auth_engine::mail::find_passcode;
use tokenizer_auth_engine::testkit::{MemoryStore, TestRng, epoch, test_hash, test_verify};
use tokenizer_auth_engine::{
    ConnId, CounterKey, Effect, EffectId, EffectResult, Engine, Input, Listener, Notice, Output, PasscodesOp,
    UserRecord, WriteBatch,
};

use crate::client::{Client, PATIENCE, Plan, Role, Route};
use crate::model::{Asked, Model, Stamp};
use crate::profile::Profile;

/// The faults a run injected, by kind (the names in the report).
pub const FAULTS: [&str; 13] = [
    "net_split",
    "hang_up",
    "malformed",
    "stall",
    "replay_old",
    "store_error",
    "lost_ack",
    "crash",
    "mail_loss",
    "mail_dup",
    "mail_4xx",
    "mail_5xx",
    "clock_jump",
];

/// How long the clients have to finish once the faults stop.
const CALM_DEADLINE: TimeDelta = TimeDelta::minutes(10);

enum Event {
    /// A client may act.
    Wake(usize),
    /// Bytes a client sent reach the server.
    Deliver(ConnId, Vec<u8>),
    /// The client's side of a connection closes.
    HangUp(ConnId),
    /// Bytes the server sent reach the client, as produced then.
    Receive(ConnId, Vec<u8>, Stamp),
    /// The server closed the connection; the client learns it.
    Closed(ConnId),
    /// An effect of the engine's life `.0` completes.
    Complete(u32, EffectId),
    /// The engine's timer, in its life `.0`.
    Timer(u32),
    /// A mail reaches a client.
    Mail(usize, String),
    /// A stalled client reads again.
    Unstall(ConnId),
    /// The server dies and restarts from its store.
    Crash,
    /// The server's clock jumps by this many milliseconds.
    Jump(i64),
}

struct Scheduled {
    at: DateTime<Utc>,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Earliest first out of a max-heap.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A connection, from both ends.
struct Conn {
    client: usize,
    /// The engine still holds it.
    open: bool,
    /// Bytes the client sent, and the server took so far.
    sent: u64,
    taken: u64,
    /// Bytes arrived but not yet taken (the engine wants no input now).
    inbound: VecDeque<u8>,
    /// Requests sent, in order: where each line ends in the stream, and the
    /// request (stamped when its last byte is taken).
    asked: VecDeque<(u64, Asked)>,
    /// Requests taken whole, waiting for their replies.
    answered: VecDeque<Asked>,
    /// Reply bytes received and not yet a whole line.
    partial: Vec<u8>,
    /// The latest arrival scheduled each way (the network keeps order).
    to_server: DateTime<Utc>,
    to_client: DateTime<Utc>,
    /// While set, the client reads nothing: the bytes wait.
    stalled: bool,
    unread: Vec<Vec<u8>>,
    /// A thief's connection: closed after its one reply.
    elsewhere: bool,
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Request lines the clients sent.
    pub requests: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// The first rule that broke, and when (simulated seconds).
    pub violation: Option<String>,
    /// Simulated time, in seconds.
    pub simulated_seconds: f64,
    /// A digest of every reply, in order: equal for equal runs.
    pub digest: u64,
    /// Replies, by kind (for the report).
    pub logins: u64,
    /// `renew|` replies.
    pub renewals: u64,
    /// Sessions revoked for reuse.
    pub revocations: u64,
    /// The capture of the engine's last life (the one in which a rule
    /// broke, if one did), when asked for.
    pub capture: Option<Vec<u8>>,
}

/// One simulated system.
pub(crate) struct World {
    profile: Profile,
    rng: TestRng,
    engine_rng: TestRng,
    engine: Engine,
    life: u32,
    clock: DateTime<Utc>,
    skew: TimeDelta,
    engine_now: DateTime<Utc>,
    /// Inputs handed to the engines so far.
    steps: u64,
    /// The input being handled is the commit of a reservation of a
    /// failure: the one step in which a password check may be asked for.
    counting: bool,
    /// The account whose replies and writes are traced to stderr.
    trace: Option<String>,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    store: MemoryStore,
    effects: BTreeMap<EffectId, Effect>,
    conns: BTreeMap<ConnId, Conn>,
    waiting_input: BTreeSet<ConnId>,
    next_conn: u64,
    clients: Vec<Client>,
    model: Model,
    timer_at: Option<DateTime<Utc>>,
    calm_since: Option<DateTime<Utc>>,
    target: u64,
    capture: Option<Vec<u8>>,
    report: Report,
}

impl World {
    /// A world for `seed`, to run `requests` request lines under faults;
    /// `capture` records the engine's calls.
    pub(crate) fn new(seed: u64, requests: u64, capture: bool) -> World {
        let profile = Profile::from_seed(seed);
        let mut store = MemoryStore::default();
        let mut clients = Vec::new();
        for n in 0..profile.devices {
            clients.push(Client::new(n, Role::Device, epoch()));
        }
        for g in 0..profile.guessers {
            let victim = (seed as usize + g) % profile.devices.max(1);
            clients.push(Client::new(profile.devices + g, Role::Guesser { victim }, epoch()));
        }
        for c in &clients {
            if c.role == Role::Device {
                let password = test_hash(&c.password);
                store.put_user(UserRecord { email: c.email.clone(), phone: c.phone.clone(), password });
            }
        }
        let config = profile.config.clone();
        let mut world = World {
            rng: TestRng::new(seed),
            engine_rng: TestRng::new(seed ^ 0xe9_91_9e),
            engine: Engine::new(config.clone()),
            life: 0,
            clock: epoch(),
            skew: TimeDelta::zero(),
            engine_now: DateTime::<Utc>::MIN_UTC,
            steps: 0,
            counting: false,
            trace: std::env::var("SIM_TRACE").ok(),
            queue: BinaryHeap::new(),
            seq: 0,
            store,
            effects: BTreeMap::new(),
            conns: BTreeMap::new(),
            waiting_input: BTreeSet::new(),
            next_conn: 0,
            clients,
            model: Model::new(config),
            timer_at: None,
            calm_since: None,
            target: requests,
            capture: capture.then(Vec::new),
            report: Report { seed, faults: FAULTS.iter().map(|f| (*f, 0)).collect(), ..Report::default() },
            profile,
        };
        world.start_capture();
        for n in 0..world.clients.len() {
            let at = world.clock + ms(world.rng.next_u64() % 2_000);
            world.schedule(at, Event::Wake(n));
        }
        world
    }

    /// Runs until every client has finished after the faults stopped, or a
    /// rule breaks.
    pub(crate) fn run(mut self) -> Report {
        while let Some(next) = self.queue.pop() {
            self.clock = self.clock.max(next.at);
            self.on(next.event);
            if self.report.violation.is_some() {
                break;
            }
            if self.report.requests >= self.target && self.calm_since.is_none() {
                self.calm_since = Some(self.clock);
                self.profile = self.profile.calm();
                let stalled: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.stalled).map(|(id, _)| *id).collect();
                for id in stalled {
                    self.on(Event::Unstall(id));
                }
            }
            if let Some(since) = self.calm_since {
                let devices = self.clients.iter().filter(|c| c.role == Role::Device);
                if devices.clone().all(|c| c.finished) {
                    break;
                }
                if self.clock > since + CALM_DEADLINE {
                    let stuck = self.clients.iter().position(|c| c.role == Role::Device && !c.finished).unwrap_or(0);
                    let c = &self.clients[stuck];
                    self.fail(format!(
                        "liveness: {} did not finish within {} minutes of the faults stopping (token: {}, replies awaited: {})",
                        c.email,
                        CALM_DEADLINE.num_minutes(),
                        c.token.is_some(),
                        c.outstanding
                    ));
                }
            }
        }
        if self.report.violation.is_none()
            && let Some(v) = self.model.violation.take()
        {
            self.fail(v);
        }
        self.report.simulated_seconds = (self.clock - epoch()).num_milliseconds() as f64 / 1000.0;
        self.report.capture = self.capture.take();
        self.report
    }

    fn fail(&mut self, what: String) {
        if self.report.violation.is_none() {
            let t = (self.clock - epoch()).num_milliseconds() as f64 / 1000.0;
            self.report.violation = Some(format!("at {t:.3} s (engine life {}): {what}", self.life));
        }
    }

    fn schedule(&mut self, at: DateTime<Utc>, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled { at, seq: self.seq, event });
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() % 1_000_000) as f64 / 1_000_000.0 < p
    }

    fn fault(&mut self, kind: &'static str) {
        *self.report.faults.entry(kind).or_default() += 1;
    }

    fn delay(&mut self, max_ms: u32) -> TimeDelta {
        ms(self.rng.next_u64() % (u64::from(max_ms) + 1))
    }

    fn on(&mut self, event: Event) {
        match event {
            Event::Wake(n) => self.wake(n),
            Event::Deliver(conn, bytes) => {
                if let Some(c) = self.conns.get_mut(&conn).filter(|c| c.open) {
                    c.inbound.extend(bytes);
                    self.waiting_input.insert(conn);
                    self.feed_waiting();
                }
            }
            Event::HangUp(conn) => {
                if self.conns.get(&conn).is_some_and(|c| c.open) {
                    self.handle(Input::Closed { conn });
                }
            }
            Event::Receive(conn, bytes, at) => self.receive(conn, bytes, at),
            Event::Closed(conn) => self.closed(conn),
            Event::Complete(life, id) => {
                if life == self.life {
                    self.complete(id);
                }
            }
            Event::Timer(life) => {
                if life == self.life {
                    self.timer_at = None;
                    self.handle(Input::Timeout);
                }
            }
            Event::Mail(n, code) => {
                let client = &mut self.clients[n];
                client.inbox.push(code);
                client.mail_since = None;
                let at = self.clock;
                self.schedule(at, Event::Wake(n));
            }
            Event::Unstall(conn) => {
                let Some(c) = self.conns.get_mut(&conn) else { return };
                c.stalled = false;
                let unread = std::mem::take(&mut c.unread);
                let open = c.open;
                for bytes in unread {
                    if open {
                        self.handle(Input::Sent { conn, bytes: bytes.len() });
                    }
                    self.transmit(conn, bytes);
                }
            }
            Event::Crash => self.crash(),
            Event::Jump(by) => {
                self.fault("clock_jump");
                self.skew += TimeDelta::milliseconds(by);
                self.timer_at = None;
                self.arm_timer();
            }
        }
    }

    /// A client acts: sends a batch, or checks on what it waits for.
    fn wake(&mut self, n: usize) {
        let calm = self.calm_since.is_some();
        if calm && matches!(self.clients[n].role, Role::Guesser { .. }) {
            return;
        }
        let client = &self.clients[n];
        if client.outstanding > 0 {
            if self.clock >= client.sent_at + PATIENCE {
                // The replies are not coming: start over on a new connection.
                if let Some(conn) = self.own_conn(n) {
                    self.schedule(self.clock, Event::HangUp(conn));
                    self.forget(conn);
                }
                self.clients[n].on_closed();
            } else {
                let at = self.clock + TimeDelta::seconds(5);
                self.schedule(at, Event::Wake(n));
                return;
            }
        }
        let victim = match self.clients[n].role {
            Role::Guesser { victim } => Some(victim),
            Role::Device => None,
        };
        let mut client = std::mem::replace(&mut self.clients[n], Client::new(n, Role::Device, self.clock));
        let plan = client.plan(&mut self.rng, &self.profile, self.clock, victim.map(|v| &self.clients[v]));
        self.clients[n] = client;
        match plan {
            Some(plan) => self.send(n, plan),
            None => {
                let at = self.clock + TimeDelta::seconds(1);
                self.schedule(at, Event::Wake(n));
            }
        }
    }

    fn own_conn(&self, n: usize) -> Option<ConnId> {
        self.conns.iter().find(|(_, c)| c.client == n && !c.elsewhere).map(|(id, _)| *id)
    }

    fn forget(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.waiting_input.remove(&conn);
    }

    fn open(&mut self, n: usize, ip: IpAddr, elsewhere: bool) -> ConnId {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        let now = self.clock;
        self.conns.insert(
            conn,
            Conn {
                client: n,
                open: true,
                sent: 0,
                taken: 0,
                inbound: VecDeque::new(),
                asked: VecDeque::new(),
                answered: VecDeque::new(),
                partial: Vec::new(),
                to_server: now,
                to_client: now,
                stalled: false,
                unread: Vec::new(),
                elsewhere,
            },
        );
        self.handle(Input::Opened { conn, peer: ip, listener: Listener::Native });
        conn
    }

    fn send(&mut self, n: usize, plan: Plan) {
        let Plan { lines, route, hang_up_after, garbage, replay } = plan;
        let client = &self.clients[n];
        let (email, mac) = (client.email.clone(), client.mac);
        let (conn, ip) = match route {
            Route::Own => match self.own_conn(n) {
                Some(conn) => (conn, client.ip),
                None => {
                    let ip = client.ip;
                    (self.open(n, ip, false), ip)
                }
            },
            Route::Elsewhere => {
                let ip = client.elsewhere;
                (self.open(n, ip, true), ip)
            }
        };
        if replay {
            self.fault("replay_old");
        }
        self.report.requests += lines.len() as u64;
        let mut bytes = Vec::new();
        {
            let c = self.conns.get_mut(&conn).expect("just opened or found");
            for line in &lines {
                bytes.extend_from_slice(line.as_bytes());
                bytes.push(b'\n');
                let end = c.sent + bytes.len() as u64;
                let asked = Asked {
                    line: line.clone(),
                    email: email.clone(),
                    mac,
                    ip,
                    delivered: Stamp { time: DateTime::<Utc>::MIN_UTC, step: 0 },
                };
                c.asked.push_back((end, asked));
            }
            c.sent += bytes.len() as u64;
        }
        if garbage {
            self.fault("malformed");
        }
        if let Some(cut) = hang_up_after {
            self.fault("hang_up");
            bytes.truncate(cut);
        }
        // The network: in order, in one piece or split.
        let pieces = if self.chance(self.profile.split) && bytes.len() > 1 {
            self.fault("net_split");
            let cut = 1 + (self.rng.next_u64() % (bytes.len() as u64 - 1)) as usize;
            let rest = bytes.split_off(cut);
            vec![bytes, rest]
        } else {
            vec![bytes]
        };
        for piece in pieces {
            let delay = self.delay(self.profile.net_delay_ms);
            let c = self.conns.get_mut(&conn).expect("the connection");
            let at = c.to_server.max(self.clock + delay);
            c.to_server = at;
            self.schedule(at, Event::Deliver(conn, piece));
        }
        if hang_up_after.is_some() {
            let at = self.conns.get(&conn).map_or(self.clock, |c| c.to_server);
            self.schedule(at, Event::HangUp(conn));
            self.forget_later(conn);
        }
        if hang_up_after.is_some() || route == Route::Elsewhere {
            let next = self.clock + TimeDelta::seconds(1);
            self.schedule(next, Event::Wake(n));
        }
        if route == Route::Own && self.chance(self.profile.stall) {
            self.fault("stall");
            if let Some(c) = self.conns.get_mut(&conn) {
                c.stalled = true;
            }
            let at = self.clock + self.delay(15_000);
            self.schedule(at, Event::Unstall(conn));
        }
        if self.calm_since.is_none() && self.chance(self.profile.clock_jump) {
            let by = (self.rng.next_u64() % 90_000) as i64 - 30_000;
            let at = self.clock + self.delay(1_000);
            self.schedule(at, Event::Jump(by));
        }
    }

    /// The client walks away from a connection it hung up: replies on it
    /// are not read.
    fn forget_later(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.elsewhere = true;
            c.asked.clear();
        }
    }

    /// Feeds waiting bytes to every connection the engine wants input from.
    fn feed_waiting(&mut self) {
        while let Some(conn) = self.waiting_input.iter().copied().find(|c| self.engine.wants_input(*c)) {
            let Some(c) = self.conns.get_mut(&conn) else {
                self.waiting_input.remove(&conn);
                continue;
            };
            let n = c.inbound.len().min(4096);
            let chunk: Vec<u8> = c.inbound.drain(..n).collect();
            if c.inbound.is_empty() {
                self.waiting_input.remove(&conn);
            }
            self.handle(Input::Received { conn, bytes: &chunk });
            let at = self.stamp();
            if let Some(c) = self.conns.get_mut(&conn) {
                c.taken += n as u64;
                while c.asked.front().is_some_and(|(end, _)| *end <= c.taken) {
                    let (_, mut asked) = c.asked.pop_front().expect("checked");
                    asked.delivered = at;
                    c.answered.push_back(asked);
                }
            }
        }
    }

    /// Hands one input to the engine and carries out what it asks. Returns
    /// the effects it asked for.
    fn handle(&mut self, input: Input<'_>) -> Vec<EffectId> {
        let now = self.clock + self.skew;
        self.engine_now = self.engine_now.max(now);
        self.steps += 1;
        self.engine.handle(now, &mut self.engine_rng, input);
        if let Some(error) = self.engine.error() {
            let error = error.to_string();
            self.fail(format!("the driving contract: {error}"));
            return Vec::new();
        }
        let mut asked = Vec::new();
        let mut sent = Vec::new();
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Transmit { conn, bytes } => {
                    let stalled = self.conns.get(&conn).is_some_and(|c| c.stalled);
                    if stalled {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.unread.push(bytes);
                        }
                    } else {
                        sent.push((conn, bytes.len()));
                        self.transmit(conn, bytes);
                    }
                }
                Output::Close { conn } | Output::HalfClose { conn } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        if matches!(output, Output::Close { .. }) {
                            c.open = false;
                        }
                        let at = c.to_client.max(self.clock);
                        c.to_client = at;
                        self.schedule(at, Event::Closed(conn));
                    }
                }
                Output::Perform { id, effect } => {
                    if matches!(effect, Effect::VerifyPassword { .. }) {
                        self.model.password_checked(self.counting);
                    }
                    let latency = match &effect {
                        Effect::Read(_) | Effect::Write(_) => self.delay(self.profile.store_latency_ms),
                        Effect::VerifyPassword { .. } | Effect::HashPassword { .. } => self.delay(50),
                        Effect::SendMail(_) => self.delay(self.profile.mail_delay_ms),
                    };
                    // A crash strikes while a write is in flight, before its
                    // result is back: what it loses is what was not yet
                    // acknowledged.
                    let crash = matches!(effect, Effect::Write(_))
                        && self.calm_since.is_none()
                        && self.chance(self.profile.crash);
                    self.effects.insert(id, effect);
                    asked.push(id);
                    let (at, life) = (self.clock + latency, self.life);
                    if crash {
                        let before =
                            self.clock + ms(self.rng.next_u64() % (latency.num_milliseconds().unsigned_abs() + 1));
                        self.schedule(before, Event::Crash);
                    }
                    self.schedule(at, Event::Complete(life, id));
                }
                Output::Stopped => {}
            }
        }
        while let Some(notice) = self.engine.poll_notice() {
            if let Notice::TokenReuse { revoked, .. } = notice {
                self.report.revocations += u64::from(revoked);
            }
        }
        if let Some(capture) = &mut self.capture {
            capture.extend(self.engine.take_capture());
        }
        self.arm_timer();
        // The client's socket took the bytes: the engine hears so as its
        // own input, and its outputs are drained like any other's.
        for (conn, bytes) in sent {
            if self.conns.get(&conn).is_some_and(|c| c.open) {
                asked.extend(self.handle(Input::Sent { conn, bytes }));
            }
        }
        asked
    }

    /// With a trace asked for: a write of the traced account's sessions.
    fn trace_write(&self, batch: &WriteBatch, result: &EffectResult) {
        let (Some(who), WriteBatch::Creds(b)) = (&self.trace, batch) else { return };
        let text = format!("{:?}", b.ops);
        if text.contains(who.as_str()) || text.contains("DeleteSession") && b.ops.len() == 1 {
            eprintln!("{} life {} engine {}: write {result:?}: {text}", self.clock, self.life, self.engine_now);
        }
    }

    /// The engine's clock and its count of inputs, now.
    fn stamp(&self) -> Stamp {
        Stamp { time: self.engine_now, step: self.steps }
    }

    fn arm_timer(&mut self) {
        let Some(at) = self.engine.poll_timeout() else { return };
        if self.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        self.timer_at = Some(at);
        let (when, life) = ((at - self.skew).max(self.clock), self.life);
        self.schedule(when, Event::Timer(life));
    }

    fn transmit(&mut self, conn: ConnId, bytes: Vec<u8>) {
        let delay = self.delay(self.profile.net_delay_ms);
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let at = c.to_client.max(self.clock + delay);
        c.to_client = at;
        let produced = self.stamp();
        self.schedule(at, Event::Receive(conn, bytes, produced));
    }

    /// Reply bytes reach a client: each whole line answers its request.
    fn receive(&mut self, conn: ConnId, bytes: Vec<u8>, at: Stamp) {
        let calm = self.calm_since.is_some();
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.partial.extend_from_slice(&bytes);
        let n = c.client;
        let mut lines = Vec::new();
        while let Some(end) = c.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = c.partial.drain(..=end).collect();
            lines.push(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        for reply in lines {
            let Some(c) = self.conns.get_mut(&conn) else { return };
            let Some(asked) = c.answered.pop_front().or_else(|| c.asked.pop_front().map(|(_, a)| a)) else {
                continue;
            };
            self.report.digest = fnv(self.report.digest, reply.as_bytes());
            if reply.starts_with(tokenizer_auth_engine::LOGIN_PREFIX) {
                self.report.logins += 1;
            } else if reply.starts_with("renew|") {
                self.report.renewals += 1;
            }
            if !documented(&reply) {
                self.fail(format!("an undocumented reply {reply:?} to {:?}", asked.line));
            }
            if self.trace.as_deref() == Some(asked.email.as_str()) {
                let t = self.clock;
                eprintln!(
                    "{t} life {} {conn:?}: {:.40} -> {reply:.40} (taken {:?}, replied {at:?})",
                    self.life, asked.line, asked.delivered
                );
            }
            self.model.reply(&asked, &reply, at);
            let presented = asked.line.split('|').next().unwrap_or_default();
            if reply == "unauthorized" && self.model.rotated_away(presented) {
                self.model.revoked(presented, at, &self.store);
            }
            let elsewhere = self.conns.get(&conn).is_some_and(|c| c.elsewhere);
            if !elsewhere {
                let now = self.clock;
                self.clients[n].on_reply(&asked.line, &reply, now, calm);
            }
        }
        let Some(c) = self.conns.get(&conn) else { return };
        let (elsewhere, done) = (c.elsewhere, c.asked.is_empty() && c.answered.is_empty());
        if elsewhere && done {
            self.schedule(self.clock, Event::HangUp(conn));
        }
        if !elsewhere && self.clients[n].outstanding == 0 {
            let at = self.clock + self.delay(2_000);
            self.schedule(at, Event::Wake(n));
        }
        if let Some(v) = self.model.violation.take() {
            self.fail(v);
        }
    }

    fn closed(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else { return };
        let (n, elsewhere, open) = (c.client, c.elsewhere, c.open);
        if open {
            // A half-close: the client closes its side too.
            self.handle(Input::Closed { conn });
        }
        self.forget(conn);
        if !elsewhere {
            self.clients[n].on_closed();
            let at = self.clock + self.delay(1_000);
            self.schedule(at, Event::Wake(n));
        }
    }

    /// An effect completes, with the faults of the profile.
    fn complete(&mut self, id: EffectId) {
        let Some(effect) = self.effects.remove(&id) else { return };
        let result = match &effect {
            Effect::Read(lookup) => {
                if self.chance(self.profile.store_error) {
                    self.fault("store_error");
                    EffectResult::Failed
                } else {
                    self.store.read(lookup)
                }
            }
            Effect::Write(batch) => {
                if self.chance(self.profile.store_error) {
                    self.fault("store_error");
                    EffectResult::Failed
                } else {
                    let result = self.store.write(batch);
                    self.trace_write(batch, &result);
                    if result == EffectResult::Committed {
                        self.model.committed(batch);
                    }
                    self.model.one_token_per_session(&self.store);
                    if result == EffectResult::Committed && self.chance(self.profile.lost_ack) {
                        self.fault("lost_ack");
                        EffectResult::Failed
                    } else {
                        result
                    }
                }
            }
            Effect::VerifyPassword { hash, candidate } => EffectResult::Verified(test_verify(hash, candidate)),
            Effect::HashPassword { password } => EffectResult::Hashed(test_hash(password.expose())),
            Effect::SendMail(mail) => self.relay(mail),
        };
        let committed = (result == EffectResult::Committed).then_some(&effect);
        self.counting = committed.is_some_and(reserves_a_failure);
        let asked = self.handle(Input::Completed { id, result: result.clone() });
        self.counting = false;
        if let Some(Effect::Write(batch)) = committed {
            let verifies: Vec<&Effect> = asked
                .iter()
                .filter_map(|id| self.effects.get(id))
                .filter(|e| matches!(e, Effect::VerifyPassword { .. }))
                .collect();
            self.model.verified_after(batch, &verifies, &self.store);
        }
        if let Some(v) = self.model.violation.take() {
            self.fail(v);
        }
        self.feed_waiting();
    }

    /// The mail relay: it accepts, refuses for now (4xx) or for good (5xx);
    /// an accepted mail may be lost or arrive twice.
    fn relay(&mut self, mail: &tokenizer_auth_engine::Mail) -> EffectResult {
        if self.chance(self.profile.mail_4xx) {
            self.fault("mail_4xx");
            return EffectResult::Failed;
        }
        if self.chance(self.profile.mail_5xx) {
            self.fault("mail_5xx");
            return EffectResult::Failed;
        }
        let Some(code) = find_passcode(mail.body.expose()).map(str::to_owned) else { return EffectResult::Sent };
        self.model.mailed(&mail.to, &code);
        let copies = if self.chance(self.profile.mail_loss) {
            self.fault("mail_loss");
            0
        } else if self.chance(self.profile.mail_dup) {
            self.fault("mail_dup");
            2
        } else {
            1
        };
        if let Some(n) = self.clients.iter().position(|c| c.role == Role::Device && c.email == mail.to) {
            for _ in 0..copies {
                let at = self.clock + self.delay(self.profile.mail_delay_ms);
                self.schedule(at, Event::Mail(n, code.clone()));
            }
        }
        EffectResult::Sent
    }

    /// The server dies: its connections and the effects in flight die with
    /// it (a write in flight may or may not have committed), and a new
    /// engine starts from the store.
    fn crash(&mut self) {
        self.fault("crash");
        let effects = std::mem::take(&mut self.effects);
        for effect in effects.values() {
            if let Effect::Write(batch) = effect
                && self.rng.next_u64().is_multiple_of(2)
                && self.store.write(batch) == EffectResult::Committed
            {
                self.model.committed(batch);
                self.model.one_token_per_session(&self.store);
            }
        }
        let key = self.profile.config.server_key.clone();
        self.model.after_crash(&self.store, &key);
        if let Some(v) = self.model.violation.take() {
            self.fail(v);
        }
        self.model.life_ended(self.engine_now);
        self.life += 1;
        self.engine = Engine::new(self.profile.config.clone());
        self.engine_now = DateTime::<Utc>::MIN_UTC;
        self.timer_at = None;
        self.start_capture();
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.open = false;
                let at = c.to_client.max(self.clock);
                self.schedule(at, Event::Closed(conn));
            }
        }
    }

    fn start_capture(&mut self) {
        if let Some(capture) = &mut self.capture {
            *capture = self.engine.start_capture();
        }
    }
}

/// Whether `effect` is a write that reserves a place in an account's
/// failure window.
fn reserves_a_failure(effect: &Effect) -> bool {
    let Effect::Write(WriteBatch::Passcodes(batch)) = effect else { return false };
    batch.ops.iter().any(|op| matches!(op, PasscodesOp::Reserve(r) if matches!(r.key, CounterKey::FailuresByEmail(_))))
}

fn ms(n: u64) -> TimeDelta {
    TimeDelta::milliseconds(i64::try_from(n).unwrap_or(i64::MAX))
}

/// FNV-1a over `bytes`, continuing from `hash`.
fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    if hash == 0 {
        hash = 0xcbf2_9ce4_8422_2325;
    }
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Whether a native reply is one of those docs/PROTOCOL.md lists.
fn documented(reply: &str) -> bool {
    matches!(reply, "Passcode is sent" | "False" | "authorized" | "unauthorized")
        || reply.strip_prefix(tokenizer_auth_engine::LOGIN_PREFIX).is_some_and(is_hex64)
        || reply.strip_prefix("renew|").is_some_and(is_hex64)
        || reply
            .strip_prefix("error|")
            .is_some_and(|code| tokenizer_auth_engine::ErrorCode::ALL.iter().any(|c| c.as_str() == code))
}

fn is_hex64(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}
