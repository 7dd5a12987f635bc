//! The world around one engine: clients, a store, a mailbox, a hasher and a
//! clock, all in memory and all deterministic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};
use rand_core::Rng;

use crate::codec::reply::LOGIN_PREFIX;
use crate::config::Config;
use crate::effect::{Effect, EffectId, EffectResult, Mail};
use crate::engine::Engine;
use crate::io::{ConnId, Input, Listener, Output};
use crate::mail::find_passcode;
use crate::testkit::{MemoryStore, TestRng, test_hash, test_verify};

/// In which order pending effects complete.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Completion {
    /// In the order they were asked for.
    InOrder,
    /// Newest first.
    Reversed,
    /// In an order drawn from this seed (never from the engine's RNG).
    Shuffled(u64),
}

/// Something that carries out effects in place of the models.
type Runner = Box<dyn FnMut(&Effect) -> EffectResult>;

/// One engine and everything around it.
pub struct World {
    /// The engine under test.
    pub engine: Engine,
    /// The store model.
    pub store: MemoryStore,
    /// Every mail the relay accepted.
    pub mailbox: Vec<Mail>,
    /// While set, the relay refuses mail.
    pub relay_down: bool,
    /// While set, password verification and hashing fail.
    pub hasher_down: bool,
    /// Password verifications performed.
    pub verifications: u64,
    /// The virtual clock.
    pub now: DateTime<Utc>,
    /// The engine's RNG.
    pub rng: TestRng,
    /// Every output, in order (for determinism checks).
    pub outputs: Vec<Output>,
    /// Carries out effects in place of the models, when set (for tests
    /// against the real store, hasher and mailer).
    runner: Option<Runner>,
    completion: Completion,
    order_rng: TestRng,
    pending: Vec<(EffectId, Effect)>,
    received: BTreeMap<ConnId, Vec<u8>>,
    /// Connections whose client reads nothing, with the bytes its socket
    /// has not taken.
    not_reading: BTreeMap<ConnId, usize>,
    half_closed: BTreeSet<ConnId>,
    closed: BTreeSet<ConnId>,
    next_conn: u64,
}

/// The time every world starts at: 2026-01-01T00:00:00Z.
pub fn epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

impl World {
    /// A world around an engine with `config`, its RNG seeded with `seed`.
    pub fn new(config: Config, seed: u64) -> World {
        World {
            engine: Engine::new(config),
            store: MemoryStore::default(),
            mailbox: Vec::new(),
            relay_down: false,
            hasher_down: false,
            verifications: 0,
            now: epoch(),
            rng: TestRng::new(seed),
            outputs: Vec::new(),
            runner: None,
            completion: Completion::InOrder,
            order_rng: TestRng::new(seed ^ 0x5eed),
            pending: Vec::new(),
            received: BTreeMap::new(),
            not_reading: BTreeMap::new(),
            half_closed: BTreeSet::new(),
            closed: BTreeSet::new(),
            next_conn: 0,
        }
    }

    /// Hands every effect to `runner` instead of the in-memory models.
    pub fn set_runner(&mut self, runner: impl FnMut(&Effect) -> EffectResult + 'static) {
        self.runner = Some(Box::new(runner));
    }

    /// Sets the order in which effects complete.
    pub fn complete_in(&mut self, completion: Completion) {
        if let Completion::Shuffled(seed) = completion {
            self.order_rng = TestRng::new(seed);
        }
        self.completion = completion;
    }

    /// Feeds one input, then drains the outputs and fires due timers.
    pub fn input(&mut self, input: Input<'_>) {
        self.handle(input);
        self.drain();
    }

    /// Feeds one input. The world drives the engine by the contract, so
    /// the engine never reports a breach of it.
    fn handle(&mut self, input: Input<'_>) {
        self.engine.handle(self.now, &mut self.rng, input);
        if let Some(error) = self.engine.error() {
            panic!("the world broke the driving contract: {error}");
        }
    }

    fn drain(&mut self) {
        loop {
            // What the sockets of reading clients take, reported once the
            // outputs of the call are drained.
            let mut taken = Vec::new();
            while let Some(output) = self.engine.poll_output() {
                match &output {
                    Output::Transmit { conn, bytes } => {
                        match self.not_reading.get_mut(conn) {
                            Some(unread) => *unread += bytes.len(),
                            None => taken.push((*conn, bytes.len())),
                        }
                        self.received.entry(*conn).or_default().extend_from_slice(bytes);
                    }
                    Output::HalfClose { conn } => {
                        self.half_closed.insert(*conn);
                    }
                    Output::Close { conn } => {
                        self.closed.insert(*conn);
                        self.not_reading.remove(conn);
                    }
                    Output::Perform { id, effect } => self.pending.push((*id, effect.clone())),
                    Output::Stopped => {}
                }
                self.outputs.push(output);
            }
            if !taken.is_empty() {
                for (conn, bytes) in taken {
                    self.handle(Input::Sent { conn, bytes });
                }
                continue;
            }
            match self.engine.poll_timeout() {
                Some(at) if at <= self.now => self.handle(Input::Timeout),
                _ => break,
            }
        }
    }

    /// Opens a connection from `ip` to `listener`.
    pub fn connect(&mut self, listener: Listener, ip: IpAddr) -> ConnId {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        self.input(Input::Opened { conn, peer: ip, listener });
        conn
    }

    /// Sends bytes on a connection.
    pub fn send(&mut self, conn: ConnId, bytes: &[u8]) {
        self.input(Input::Received { conn, bytes });
    }

    /// The client hangs up.
    pub fn hang_up(&mut self, conn: ConnId) {
        self.input(Input::Closed { conn });
        self.closed.insert(conn);
    }

    /// The client stops reading: its socket takes nothing from now on.
    pub fn stop_reading(&mut self, conn: ConnId) {
        self.not_reading.entry(conn).or_insert(0);
    }

    /// The client reads again: its socket takes what waited.
    pub fn resume_reading(&mut self, conn: ConnId) {
        if let Some(unread) = self.not_reading.remove(&conn)
            && unread > 0
        {
            self.input(Input::Sent { conn, bytes: unread });
        }
    }

    /// A client that is not reading takes up to `bytes` of what waits.
    pub fn read_some(&mut self, conn: ConnId, bytes: usize) {
        let Some(unread) = self.not_reading.get_mut(&conn) else { return };
        let n = (*unread).min(bytes);
        if n > 0 {
            *unread -= n;
            self.input(Input::Sent { conn, bytes: n });
        }
    }

    /// The engine asked to shut the write side of the connection.
    pub fn is_half_closed(&self, conn: ConnId) -> bool {
        self.half_closed.contains(&conn)
    }

    /// The engine sends nothing more on the connection: it shut the write
    /// side (and lingers before the close), or closed it.
    pub fn is_finished(&self, conn: ConnId) -> bool {
        self.is_half_closed(conn) || self.is_closed(conn)
    }

    /// Bytes the connection owes its client: encoded, not yet taken.
    pub fn unsent(&self, conn: ConnId) -> usize {
        self.engine.unsent(conn)
    }

    /// Moves the clock forward, firing whatever comes due.
    pub fn advance(&mut self, by: TimeDelta) {
        self.now += by;
        self.drain();
    }

    /// Effects waiting for a result.
    pub fn pending(&self) -> &[(EffectId, Effect)] {
        &self.pending
    }

    /// Carries out one pending effect, chosen by the completion order.
    /// Returns whether there was one.
    pub fn step(&mut self) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let index = match self.completion {
            Completion::InOrder => 0,
            Completion::Reversed => self.pending.len() - 1,
            Completion::Shuffled(_) => (self.order_rng.next_u64() % self.pending.len() as u64) as usize,
        };
        let (id, effect) = self.pending.remove(index);
        let result = match &mut self.runner {
            Some(runner) => runner(&effect),
            None => self.execute(&effect),
        };
        self.input(Input::Completed { id, result });
        true
    }

    /// Completes effects until none are pending.
    pub fn settle(&mut self) {
        while self.step() {}
    }

    /// Carries out an effect against the store, relay and hasher models.
    pub fn execute(&mut self, effect: &Effect) -> EffectResult {
        match effect {
            Effect::Read(lookup) => self.store.read(lookup),
            Effect::Write(batch) => self.store.write(batch),
            Effect::VerifyPassword { hash, candidate } => {
                self.verifications += 1;
                if self.hasher_down {
                    return EffectResult::Failed;
                }
                EffectResult::Verified(test_verify(hash, candidate))
            }
            Effect::HashPassword { password } => {
                if self.hasher_down {
                    return EffectResult::Failed;
                }
                EffectResult::Hashed(test_hash(password.expose()))
            }
            Effect::SendMail(mail) => {
                if self.relay_down {
                    return EffectResult::Failed;
                }
                self.mailbox.push(mail.clone());
                EffectResult::Sent
            }
        }
    }

    /// Takes everything received on a connection so far.
    pub fn take_received(&mut self, conn: ConnId) -> Vec<u8> {
        self.received.remove(&conn).unwrap_or_default()
    }

    /// Whether the engine closed the connection (or the client hung up).
    pub fn is_closed(&self, conn: ConnId) -> bool {
        self.closed.contains(&conn)
    }

    /// Sends one native request line and returns the reply line (without its
    /// line feed), completing effects as they come.
    pub fn request(&mut self, conn: ConnId, line: &str) -> String {
        self.send(conn, format!("{line}\n").as_bytes());
        self.settle();
        let mut bytes = self.take_received(conn);
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The passcode in the latest mail to `email`.
    pub fn passcode_for(&self, email: &str) -> Option<String> {
        let mail = self.mailbox.iter().rev().find(|m| m.to == email)?;
        find_passcode(mail.body.expose()).map(str::to_owned)
    }

    /// A whole login on a fresh native connection: passcode request, mail,
    /// login. Returns the base token, or the reply that refused it.
    pub fn login(&mut self, ip: IpAddr, mac: &str, email: &str, phone: &str, password: &str) -> Result<String, String> {
        self.login_reading_mail(ip, mac, email, phone, password, |w| w.passcode_for(email))
    }

    /// [`World::login`], with the passcode read by `read_mail` (from an
    /// outbox or an SMTP server, when effects go to real executors).
    pub fn login_reading_mail(
        &mut self,
        ip: IpAddr,
        mac: &str,
        email: &str,
        phone: &str,
        password: &str,
        read_mail: impl FnOnce(&World) -> Option<String>,
    ) -> Result<String, String> {
        let conn = self.connect(Listener::Native, ip);
        let reply = self.request(conn, &format!("require_passcode|{mac}|{password}|{phone}|{email}"));
        if reply != "Passcode is sent" {
            return Err(reply);
        }
        let code = read_mail(self).ok_or("no mail")?;
        let reply = self.request(conn, &format!("{mac}|{email}|{phone}|{password}|{code}"));
        self.hang_up(conn);
        reply.strip_prefix(LOGIN_PREFIX).map(str::to_owned).ok_or(reply)
    }
}
