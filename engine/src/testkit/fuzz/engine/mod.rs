//! The `engine` target: the engine driven by a decoded script, with a model
//! beside it that checks every output.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, TimeDelta, Utc};

use crate::codec::legacy;
use crate::codec::reply::{ErrorCode, LOGIN_PREFIX};
use crate::codec::request::{REQUIRE_PASSCODE, Request};
use crate::config::Config;
use crate::contract::ContractError;
use crate::device::{Mac, normalize_ip};
use crate::effect::{Effect, EffectId, EffectResult};
use crate::engine::Engine;
use crate::io::{ConnId, Input, Listener, Output};
use crate::mail::find_passcode;
use crate::passcode::{ALPHABET, LENGTH};
use crate::store::{
    CredsBatch, CredsExpectation, CredsOp, PasscodesBatch, PasscodesOp, SessionRecord, Snapshot, UserRecord, WriteBatch,
};
use crate::testkit::{MemoryStore, TestRng, epoch, test_hash, test_verify};
use crate::token::{BaseToken, MasterToken};
mod script;
mod seeds;

use super::unpickle;
pub(super) use script::USERS;
use script::*;
pub use seeds::engine_seeds;

/// What one run of the `engine` target did (for tests that want to know a
/// corpus file reaches deep states).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Report {
    /// Actions decoded and run.
    pub actions: usize,
    /// Effects the engine asked for.
    pub effects: usize,
    /// Reply lines (native) and pickles (legacy) checked.
    pub replies: usize,
    /// `Passcode is sent` replies.
    pub passcodes_sent: usize,
    /// Login replies (with a token).
    pub logins: usize,
    /// `authorized` replies.
    pub authorized: usize,
    /// `renew|<token>` replies.
    pub renewals: usize,
    /// Sessions revoked because a rotated-away token came back.
    pub revocations: usize,
    /// Connections the engine closed.
    pub closes: usize,
    /// Effects a shutdown abandoned.
    pub abandoned: usize,
    /// Late results reported for them.
    pub late_results: usize,
    /// Breaches of the driving contract fed at the end (0 or 1).
    pub breaches: usize,
}

/// The `engine` target: decodes a script from `data` with `arbitrary` and
/// runs it against an [`Engine`], checking the invariants after every
/// input; then settles everything and lets every deadline pass, after which
/// nothing may be left; then feeds the breach of the driving contract the
/// script asked for, if any, and checks that the engine stopped for good.
/// Panics on a violation.
pub fn engine(data: &[u8]) -> Report {
    let Some(script) = decode(data) else { return Report::default() };
    let mut run = Run::new(script.knobs.config());
    for action in &script.actions {
        run.act(action);
        run.report.actions += 1;
    }
    run.finish();
    run.report
}

/// The script an `engine` input decodes to, one action a line, for reading
/// a finding (`None` if it decodes to nothing).
pub fn engine_script(data: &[u8]) -> Option<String> {
    let script = decode(data)?;
    let mut text = format!("{:?}\n", script.knobs);
    for action in &script.actions {
        text.push_str(&format!("{action:?}\n"));
    }
    Some(text)
}

/// What a request line asked, as far as the checks care.
#[derive(Clone, Debug)]
enum Expect {
    Malformed,
    /// A request this listener does not serve.
    NotServed,
    Token {
        master: MasterToken,
        mac: Mac,
    },
    Passcode {
        email: String,
    },
    Login {
        email: String,
        code: String,
        mac: Mac,
    },
}

fn expect_of(line: &[u8], peer: IpAddr, listener: Listener) -> Expect {
    match (Request::parse(line), listener) {
        (Err(_), _) => Expect::Malformed,
        (Ok(Request::Token(r)), Listener::Native) => {
            Expect::Token { master: MasterToken::derive(&r.token, r.mac, peer), mac: r.mac }
        }
        (Ok(Request::Passcode(r)), Listener::Native | Listener::LegacyPasscode) => {
            Expect::Passcode { email: r.email.to_owned() }
        }
        (Ok(Request::Login(r)), Listener::Native | Listener::LegacyLogin) => {
            Expect::Login { email: r.email.to_owned(), code: r.passcode.to_owned(), mac: r.mac }
        }
        (Ok(_), _) => Expect::NotServed,
    }
}

/// One connection slot as the runtime and the model see it.
#[derive(Default)]
struct Slot {
    opened: bool,
    /// The engine asked to close it; nothing may come for it until it is
    /// opened again.
    closed: bool,
    hung_up: bool,
    listener: Option<Listener>,
    peer: Option<IpAddr>,
    /// Written by the client, not yet read by the runtime.
    socket: Vec<u8>,
    /// Native framing model: the bytes the engine took, and where the
    /// first line not yet answered starts. Lines are framed (and parsed)
    /// only when their reply comes, as the engine frames them only when it
    /// takes them: a flood costs the model no more than the engine.
    stream: Vec<u8>,
    answered: usize,
    /// Legacy: what the engine kept of the request.
    kept: Vec<u8>,
    /// Transmitted and not yet checked (a partial native line).
    received: Vec<u8>,
    replies: usize,
    /// A reply after which nothing more may come (too many connections,
    /// line too long).
    last_reply: bool,
    /// The client reads nothing; `unread` bytes wait in its socket.
    deaf: bool,
    unread: usize,
    /// The engine shut the write side.
    half_closed: bool,
}

/// An effect the engine asked for and the runtime has not reported.
struct Pending {
    id: EffectId,
    effect: Effect,
    /// The engine's time when it asked.
    asked_at: DateTime<Utc>,
    /// Carried out already (`Execute`): the result to report.
    result: Option<EffectResult>,
}

/// The model's view of one session (one token).
#[derive(Clone, Copy, Debug)]
struct SessionModel {
    started: DateTime<Utc>,
    expires: DateTime<Utc>,
    /// The session it was rotated from.
    rotated_from: Option<MasterToken>,
    /// The write that stores it was reported committed.
    committed: bool,
    /// Its token went out in a reply.
    handed_out: bool,
}

/// Which completion the outputs of one `handle` call follow.
#[derive(Clone, Copy, Default)]
struct Resumed {
    /// A passcode consumption reported committed; the time the login was
    /// decided (when the consumption was asked for).
    consumed_at: Option<DateTime<Utc>>,
    /// A token check's session read, and the session it asked for.
    session_read: Option<MasterToken>,
}

struct Run {
    engine: Engine,
    config: Config,
    rng: TestRng,
    /// The runtime's clock (it may run backwards).
    now: DateTime<Utc>,
    /// The engine's clock: the latest `now` it was given.
    engine_now: DateTime<Utc>,
    store: MemoryStore,
    slots: Vec<Slot>,
    pending: Vec<Pending>,
    /// Effects a shutdown abandoned, not yet reported.
    abandoned: Vec<Pending>,
    reported: Vec<EffectId>,
    /// The first breach of the contract the script asked for (a result for
    /// an effect never asked for, or a second one), fed after the rest: the
    /// engine stops for good on it.
    breach: Option<(EffectId, Outcome)>,
    next_effect: u64,
    /// Every passcode mailed, in order: (email, code).
    mails: Vec<(String, String)>,
    /// Every token that came back in a reply, with the MAC it was asked for.
    tokens: Vec<(BaseToken, Mac)>,
    sessions: BTreeMap<MasterToken, SessionModel>,
    /// Session reads reported while the session was valid, not yet matched
    /// by an `authorized` reply.
    valid_reads: BTreeMap<MasterToken, u32>,
    /// Mails per (email, code), and logins made with each.
    mailed: BTreeMap<(String, String), u32>,
    logged_in: BTreeMap<(String, String), u32>,
    /// Passcodes stored (reported committed) per email, and `Passcode is
    /// sent` replies per email.
    stored_passcodes: BTreeMap<String, u32>,
    sent_replies: BTreeMap<String, u32>,
    /// Bounds on what may be in flight: line feeds fed, legacy
    /// connections opened, password checks reported.
    lines_fed: usize,
    legacy_opened: usize,
    verifications: usize,
    floods: usize,
    /// Bytes the sockets of reading clients took, to report as `Sent`.
    taken: Vec<(ConnId, usize)>,
    shutdown: bool,
    stopped: bool,
    report: Report,
}

fn is_token_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(super) fn is_login(text: &str) -> bool {
    text.strip_prefix(LOGIN_PREFIX).is_some_and(is_token_hex)
}

fn error_code(text: &str) -> Option<ErrorCode> {
    let code = text.strip_prefix("error|")?;
    ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
}

impl Run {
    fn new(config: Config) -> Run {
        let mut store = MemoryStore::default();
        for (email, phone, password) in USERS {
            if !matches!(password, Stored::Absent) {
                store.put_user(UserRecord { email: email.into(), phone: phone.into(), password: password.hash() });
            }
        }
        Run {
            engine: Engine::new(config.clone()),
            config,
            rng: TestRng::new(0x5eed),
            now: epoch(),
            // As the engine's: it has seen no time yet.
            engine_now: DateTime::<Utc>::MIN_UTC,
            store,
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            pending: Vec::new(),
            abandoned: Vec::new(),
            reported: Vec::new(),
            breach: None,
            next_effect: 0,
            mails: Vec::new(),
            tokens: Vec::new(),
            sessions: BTreeMap::new(),
            valid_reads: BTreeMap::new(),
            mailed: BTreeMap::new(),
            logged_in: BTreeMap::new(),
            stored_passcodes: BTreeMap::new(),
            sent_replies: BTreeMap::new(),
            lines_fed: 0,
            legacy_opened: 0,
            verifications: 0,
            floods: 0,
            taken: Vec::new(),
            shutdown: false,
            stopped: false,
            report: Report::default(),
        }
    }

    fn act(&mut self, action: &Action) {
        match action {
            Action::Open { slot, peer: p, listener } => self.open(usize::from(*slot) % SLOTS, peer(*p), *listener),
            Action::Send { slot, bytes, force } => self.write(usize::from(*slot) % SLOTS, &bytes.0, *force),
            Action::Request { slot, request, ending } => {
                let slot = usize::from(*slot) % SLOTS;
                let line = self.render(request);
                match ending {
                    Ending::Lf => self.write(slot, format!("{line}\n").as_bytes(), false),
                    Ending::CrLf => self.write(slot, format!("{line}\r\n").as_bytes(), false),
                    Ending::Bare => self.write(slot, line.as_bytes(), false),
                    Ending::Split(at) => {
                        let line = format!("{line}\n").into_bytes();
                        let (a, b) = line.split_at(usize::from(*at) % line.len());
                        self.write(slot, a, false);
                        self.write(slot, b, false);
                    }
                }
            }
            Action::Flood { slot, pattern, kib, force } => {
                let pattern: &[u8] = if pattern.0.is_empty() { b"x" } else { &pattern.0 };
                self.floods += 1;
                let size = if self.floods <= 4 { 1024 << kib.saturating_sub(247) } else { 1024 };
                let bytes: Vec<u8> = pattern.iter().copied().cycle().take(size).collect();
                self.write(usize::from(*slot) % SLOTS, &bytes, *force);
            }
            Action::HangUp { slot } => {
                let slot = usize::from(*slot) % SLOTS;
                let s = &mut self.slots[slot];
                s.socket.clear();
                if s.opened && !s.closed {
                    s.hung_up = true;
                }
                self.input(Input::Closed { conn: ConnId(slot as u64) }, Resumed::default());
            }
            Action::Fail { slot } => {
                let slot = usize::from(*slot) % SLOTS;
                let s = &mut self.slots[slot];
                s.socket.clear();
                if s.opened && !s.closed {
                    s.hung_up = true;
                }
                self.input(Input::Failed { conn: ConnId(slot as u64) }, Resumed::default());
            }
            Action::Deafen { slot } => self.slots[usize::from(*slot) % SLOTS].deaf = true,
            Action::Read { slot, bytes } => self.read_replies(usize::from(*slot) % SLOTS, usize::from(*bytes)),
            Action::Shutdown => {
                self.shutdown = true;
                self.input(Input::Shutdown, Resumed::default());
            }
            Action::Advance { ms } => self.now += TimeDelta::milliseconds(i64::from(*ms)),
            Action::AdvanceLong { minutes } => self.now += TimeDelta::minutes(i64::from(*minutes)),
            Action::Rewind { ms } => self.now -= TimeDelta::milliseconds(i64::from(*ms)),
            Action::Timeout => self.timeout(),
            Action::ToDeadline => {
                if let Some(at) = self.engine.poll_timeout() {
                    self.now = self.now.max(at);
                }
                self.timeout();
            }
            Action::Execute { pick } => {
                if !self.pending.is_empty() {
                    let i = usize::from(*pick) % self.pending.len();
                    if self.pending[i].result.is_none() {
                        let result = self.execute(&self.pending[i].effect.clone());
                        self.pending[i].result = Some(result);
                    }
                }
            }
            Action::Complete { pick, outcome } => {
                if !self.pending.is_empty() {
                    self.complete(usize::from(*pick) % self.pending.len(), *outcome);
                }
            }
            Action::Settle => self.settle(),
            Action::Stray { id, outcome } => {
                if !self.abandoned.is_empty() {
                    let index = usize::try_from(*id % self.abandoned.len() as u64).unwrap_or_default();
                    self.late_result(index, *outcome);
                } else if !self.pending.iter().any(|p| p.id.0 == *id) {
                    self.breach.get_or_insert((EffectId(*id), *outcome));
                }
            }
            Action::Replay { pick, outcome } => {
                if !self.reported.is_empty() {
                    let id = self.reported[usize::from(*pick) % self.reported.len()];
                    self.breach.get_or_insert((id, *outcome));
                }
            }
        }
        self.read_sockets();
    }

    /// After the script: everything completes, every deadline passes, and
    /// then the engine must hold nothing.
    fn finish(&mut self) {
        for slot in 0..SLOTS {
            self.slots[slot].deaf = false;
            self.read_replies(slot, usize::MAX);
        }
        for _ in 0..8 {
            // Each request makes a handful of effects, and a script feeds at
            // most a few MiB of requests.
            self.settle_at_most(1 << 22);
            self.read_sockets();
            self.check_no_stall();
            self.now = self.now.max(self.engine_now) + TimeDelta::hours(1);
            self.timeout();
            if self.pending.is_empty() && self.engine.connections() == 0 {
                break;
            }
        }
        assert_eq!(self.engine.effects_in_flight(), 0, "effects still in flight after everything settled");
        assert_eq!(self.engine.connections(), 0, "connections left after every deadline passed");
        assert_eq!(self.engine.poll_timeout().filter(|&at| at <= self.engine_now), None, "a deadline left in the past");
        assert_eq!(self.stopped, self.shutdown, "a shutdown that never said it stopped");
        self.feed_breach();
    }

    /// Feeds the breach the script asked for, last, and checks that the
    /// engine names it and is stopped for good: nothing out, no input
    /// wanted, no deadline, and later inputs (another breach among them)
    /// change nothing.
    fn feed_breach(&mut self) {
        let Some((id, outcome)) = self.breach else { return };
        let expected = if self.reported.contains(&id) {
            ContractError::DuplicateResult(id)
        } else if id.0 >= self.next_effect {
            ContractError::UnknownEffect(id)
        } else {
            // An effect the shutdown abandoned: a late result is no breach.
            return;
        };
        self.report.breaches += 1;
        let result = self.lie(outcome);
        self.engine.handle(self.now, &mut self.rng, Input::Completed { id, result });
        let conn = Run::conn(0);
        let later = [
            Input::Opened { conn, peer: peer(0), listener: Listener::Native },
            Input::Received { conn, bytes: b"not a request\n" },
            Input::Completed { id: EffectId(u64::MAX), result: EffectResult::Failed },
            Input::Timeout,
            Input::Shutdown,
        ];
        for input in later {
            assert_eq!(self.engine.error(), Some(&expected), "the breach is not the one fed");
            assert_eq!(self.engine.poll_output(), None, "output after a breach of the contract");
            assert_eq!(self.engine.poll_notice(), None, "a notice after a breach of the contract");
            assert_eq!(self.engine.poll_timeout(), None, "a deadline after a breach of the contract");
            assert!(!self.engine.wants_input(conn), "input wanted after a breach of the contract");
            self.now += TimeDelta::hours(1);
            self.engine.handle(self.now, &mut self.rng, input);
        }
        assert_eq!(self.engine.error(), Some(&expected), "the first breach is not kept");
        assert_eq!(self.engine.poll_output(), None, "output after a breach of the contract");
    }

    /// The client reads up to `bytes` of what waits in its socket.
    fn read_replies(&mut self, slot: usize, bytes: usize) {
        let s = &mut self.slots[slot];
        let n = s.unread.min(bytes);
        if n > 0 && s.opened && !s.closed {
            s.unread -= n;
            self.input(Input::Sent { conn: Run::conn(slot), bytes: n }, Resumed::default());
        }
    }

    fn conn(slot: usize) -> ConnId {
        ConnId(slot as u64)
    }

    fn open(&mut self, slot: usize, ip: IpAddr, listener: ListenerPick) {
        let conn = Run::conn(slot);
        if self.engine.has_connection(conn) {
            return;
        }
        let listener = listener.listener();
        self.slots[slot] =
            Slot { opened: true, listener: Some(listener), peer: Some(normalize_ip(ip)), ..Slot::default() };
        if listener != Listener::Native {
            self.legacy_opened += 1;
        }
        self.input(Input::Opened { conn, peer: ip, listener }, Resumed::default());
    }

    /// The client writes; the runtime reads when the engine wants input
    /// (or at once, when `force`d, with whatever was waiting first).
    fn write(&mut self, slot: usize, bytes: &[u8], force: bool) {
        self.slots[slot].socket.extend_from_slice(bytes);
        if force {
            let waiting = std::mem::take(&mut self.slots[slot].socket);
            for piece in waiting.chunks(READ_SIZE) {
                self.feed(slot, piece);
            }
        }
        self.read_sockets();
    }

    fn read_sockets(&mut self) {
        for slot in 0..SLOTS {
            while !self.slots[slot].socket.is_empty() && self.engine.wants_input(Run::conn(slot)) {
                let n = self.slots[slot].socket.len().min(READ_SIZE);
                let piece: Vec<u8> = self.slots[slot].socket.drain(..n).collect();
                self.feed(slot, &piece);
            }
        }
    }

    /// Feeds bytes to the engine, and to the model what the engine keeps of
    /// them.
    fn feed(&mut self, slot: usize, bytes: &[u8]) {
        let conn = Run::conn(slot);
        let takes = self.engine.has_connection(conn);
        let wants = self.engine.wants_input(conn);
        let s = &mut self.slots[slot];
        if takes && s.opened && !s.closed && !s.hung_up {
            match s.listener {
                Some(Listener::Native) => {
                    self.lines_fed += bytes.iter().filter(|&&b| b == b'\n').count();
                    s.stream.extend_from_slice(bytes);
                }
                // A legacy connection takes bytes only until its request
                // starts, which is exactly while it wants input.
                Some(_) if wants => {
                    let room = legacy::MAX_REQUEST - s.kept.len();
                    s.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
                _ => {}
            }
        }
        self.input(Input::Received { conn, bytes }, Resumed::default());
    }

    fn timeout(&mut self) {
        self.input(Input::Timeout, Resumed::default());
        if let Some(at) = self.engine.poll_timeout() {
            assert!(
                at > self.engine_now,
                "after a timeout at {} (engine time), the next deadline {at} is not in the future: a runtime that \
                 honours poll_timeout would spin",
                self.engine_now
            );
        }
    }

    fn settle(&mut self) {
        self.settle_at_most(MAX_SETTLE);
    }

    fn settle_at_most(&mut self, limit: usize) {
        for _ in 0..limit {
            if self.pending.is_empty() {
                break;
            }
            self.complete(0, Outcome::Honest);
        }
    }

    /// Carries out an effect against the models.
    fn execute(&mut self, effect: &Effect) -> EffectResult {
        match effect {
            Effect::Read(lookup) => self.store.read(lookup),
            Effect::Write(batch) => {
                let result = self.store.write(batch);
                // Durable from here, reported or not: a rotation record
                // another check reads names a session that exists.
                if let (EffectResult::Committed, WriteBatch::Creds(b)) = (&result, batch) {
                    self.sessions_committed(b);
                }
                result
            }
            Effect::VerifyPassword { hash, candidate } => EffectResult::Verified(test_verify(hash, candidate)),
            Effect::HashPassword { password } => EffectResult::Hashed(test_hash(password.expose())),
            Effect::SendMail(_) => EffectResult::Sent,
        }
    }

    /// A result as the outcome says, whatever the effect.
    fn lie(&self, outcome: Outcome) -> EffectResult {
        self.lie_about(None, outcome)
    }

    /// A result as the outcome says, for `effect` if given: one of another
    /// kind would break the driving contract, so it is reported `Failed`,
    /// the result that answers every kind.
    fn lie_about(&self, effect: Option<&Effect>, outcome: Outcome) -> EffectResult {
        let result = self.told(outcome);
        match (effect, result.kind()) {
            (Some(effect), Some(kind)) if kind != effect.kind() => EffectResult::Failed,
            _ => result,
        }
    }

    fn told(&self, outcome: Outcome) -> EffectResult {
        match outcome {
            Outcome::Honest | Outcome::Failed => EffectResult::Failed,
            Outcome::Conflict => EffectResult::Conflict,
            Outcome::EmptyRead => EffectResult::Read(Box::default()),
            Outcome::Committed => EffectResult::Committed,
            Outcome::Verified(v) => EffectResult::Verified(v),
            Outcome::Hashed => EffectResult::Hashed(test_hash("a hash nobody asked for")),
            Outcome::Sent => EffectResult::Sent,
        }
    }

    fn complete(&mut self, index: usize, outcome: Outcome) {
        let mut p = self.pending.remove(index);
        let own_kind = matches!(
            (&p.effect, outcome),
            (_, Outcome::Honest)
                | (Effect::Write(_), Outcome::Committed)
                | (Effect::VerifyPassword { .. }, Outcome::Verified(_))
                | (Effect::HashPassword { .. }, Outcome::Hashed)
                | (Effect::SendMail(_), Outcome::Sent)
        );
        let result = if own_kind {
            match p.result.take() {
                Some(result) => result,
                None => self.execute(&p.effect),
            }
        } else {
            self.lie_about(Some(&p.effect), outcome)
        };
        self.engine_now = self.engine_now.max(self.now);
        let mut resumed = Resumed::default();
        match (&p.effect, &result) {
            (Effect::Read(lookup), EffectResult::Read(snapshot)) => {
                if let (Some(master), None, None) = (lookup.session, &lookup.user, &lookup.passcode) {
                    resumed.session_read = Some(master);
                    self.count_session_read(master, snapshot);
                }
            }
            (Effect::Write(batch), EffectResult::Committed) => {
                if is_consumption(batch) {
                    resumed.consumed_at = Some(p.asked_at);
                }
                self.committed(batch);
            }
            (Effect::VerifyPassword { .. }, _) => self.verifications += 1,
            _ => {}
        }
        self.reported.push(p.id);
        self.input(Input::Completed { id: p.id, result }, resumed);
    }

    /// A session read reported at the engine's current time: if the session
    /// is valid now, it may justify one `authorized`.
    fn count_session_read(&mut self, master: MasterToken, snapshot: &Snapshot) {
        let Some(session) = snapshot.session.as_ref().filter(|s| s.master == master) else { return };
        let model = *self.sessions.get(&master).expect("a session in the store that the engine never wrote");
        assert_eq!((session.started_at, session.expires_at), (model.started, model.expires));
        if self.valid(&model, self.engine_now) {
            *self.valid_reads.entry(master).or_default() += 1;
        }
    }

    fn committed(&mut self, batch: &WriteBatch) {
        match batch {
            WriteBatch::Passcodes(b) => {
                for op in &b.ops {
                    if let PasscodesOp::Put(record) = op {
                        *self.stored_passcodes.entry(record.key.email.clone()).or_default() += 1;
                    }
                }
            }
            WriteBatch::Creds(b) => self.sessions_committed(b),
        }
    }

    fn sessions_committed(&mut self, batch: &CredsBatch) {
        for op in &batch.ops {
            if let CredsOp::PutSession(s) = op {
                self.sessions.get_mut(&s.master).expect("a session write the model never saw").committed = true;
            }
        }
    }

    fn alive(&self, started: DateTime<Utc>, at: DateTime<Utc>) -> bool {
        self.config.session.max_age <= TimeDelta::zero() || at < started + self.config.session.max_age
    }

    fn valid(&self, model: &SessionModel, at: DateTime<Utc>) -> bool {
        self.alive(model.started, at) && at < model.expires
    }

    /// The expiry of a token issued at `issued` in a session started at
    /// `started`: one token lifetime, never past the session's age.
    fn expiry(&self, started: DateTime<Utc>, issued: DateTime<Utc>) -> DateTime<Utc> {
        let ttl = issued + self.config.session.token_ttl;
        if self.config.session.max_age > TimeDelta::zero() {
            ttl.min(started + self.config.session.max_age)
        } else {
            ttl
        }
    }

    /// A late result for an effect the shutdown abandoned: it goes nowhere.
    fn late_result(&mut self, index: usize, outcome: Outcome) {
        let p = self.abandoned.remove(index);
        let result = match outcome {
            Outcome::Honest => self.execute(&p.effect),
            _ => self.lie_about(Some(&p.effect), outcome),
        };
        self.reported.push(p.id);
        self.report.late_results += 1;
        self.engine_now = self.engine_now.max(self.now);
        self.handle(Input::Completed { id: p.id, result });
        assert_eq!(self.engine.poll_output(), None, "a late result for an abandoned effect produced output");
        self.check_bounds();
    }

    /// Feeds one input, by the contract: the engine never reports a breach.
    fn handle(&mut self, input: Input<'_>) {
        self.engine.handle(self.now, &mut self.rng, input);
        if let Some(error) = self.engine.error() {
            panic!("the script broke the driving contract: {error}");
        }
    }

    fn input(&mut self, input: Input<'_>, resumed: Resumed) {
        self.engine_now = self.engine_now.max(self.now);
        self.handle(input);
        while let Some(output) = self.engine.poll_output() {
            self.output(output, resumed);
        }
        // The sockets of reading clients take what was sent at once.
        for (conn, bytes) in std::mem::take(&mut self.taken) {
            self.input(Input::Sent { conn, bytes }, Resumed::default());
        }
        self.check_bounds();
    }

    fn check_bounds(&self) {
        assert_eq!(self.engine.effects_in_flight(), self.pending.len(), "effects in flight ≠ effects not reported");
        assert!(
            self.pending.len() <= self.lines_fed + self.legacy_opened + self.verifications,
            "{} effects in flight for {} lines, {} legacy connections and {} password checks",
            self.pending.len(),
            self.lines_fed,
            self.legacy_opened,
            self.verifications
        );
        assert!(
            self.engine.connections() <= self.config.max_connections,
            "{} connections held, limit {}",
            self.engine.connections(),
            self.config.max_connections
        );
        for (slot, s) in self.slots.iter().enumerate() {
            if s.listener.is_some_and(|l| l != Listener::Native) && s.replies > 0 && s.unread == 0 {
                assert!(s.closed || s.half_closed, "legacy connection {slot} answered but not shut");
            }
            let unsent = self.engine.unsent(Run::conn(slot));
            assert!(
                unsent < self.config.max_backlog.max(1) + LONGEST_REPLY,
                "connection {slot} owes {unsent} bytes, max_backlog {}",
                self.config.max_backlog
            );
        }
    }

    /// With every effect reported, a connection the client still uses must
    /// want input, or what it sends is never read.
    fn check_no_stall(&self) {
        if !self.pending.is_empty() {
            return;
        }
        for (slot, s) in self.slots.iter().enumerate() {
            let conn = Run::conn(slot);
            // A connection told it is done (line too long, too many
            // connections) has nothing owed here, so it is closed already.
            if self.engine.has_connection(conn) && !s.hung_up && s.unread == 0 {
                assert!(
                    self.engine.wants_input(conn),
                    "connection {slot} stalled: open, nothing in flight, no input wanted"
                );
            }
        }
    }

    fn output(&mut self, output: Output, resumed: Resumed) {
        match output {
            Output::Transmit { conn, bytes } => {
                let slot = self.live_slot(conn, "a transmit");
                assert!(!bytes.is_empty(), "an empty transmit");
                assert!(!self.slots[slot].half_closed, "a transmit after the write side was shut");
                if self.slots[slot].deaf {
                    self.slots[slot].unread += bytes.len();
                } else {
                    self.taken.push((conn, bytes.len()));
                }
                self.slots[slot].received.extend_from_slice(&bytes);
                if self.slots[slot].listener == Some(Listener::Native) {
                    assert_eq!(bytes.last(), Some(&b'\n'), "a native transmit that does not end a line");
                    self.native_replies(slot);
                } else {
                    self.legacy_reply(slot);
                }
            }
            Output::HalfClose { conn } => {
                let slot = self.live_slot(conn, "a half-close");
                let s = &mut self.slots[slot];
                assert!(!s.half_closed, "a second half-close");
                assert_eq!(s.unread, 0, "a half-close before the client took every byte");
                s.half_closed = true;
            }
            Output::Close { conn } => {
                let slot = self.live_slot(conn, "a close");
                let s = &mut self.slots[slot];
                s.closed = true;
                s.unread = 0;
                self.taken.retain(|(c, _)| *c != conn);
                self.report.closes += 1;
            }
            Output::Stopped => {
                assert!(self.shutdown, "stopped without a shutdown");
                assert!(!self.stopped, "stopped twice");
                assert_eq!(self.engine.connections(), 0, "stopped with connections open");
                self.stopped = true;
                // Stopped with effects out: the grace ran out, and the
                // engine abandoned them.
                self.report.abandoned += self.pending.len();
                self.abandoned.append(&mut self.pending);
            }
            Output::Perform { id, effect } => {
                assert_eq!(id, EffectId(self.next_effect), "effect ids must be fresh");
                self.next_effect += 1;
                self.report.effects += 1;
                self.performed(&effect, resumed);
                self.pending.push(Pending { id, effect, asked_at: self.engine_now, result: None });
            }
        }
    }

    fn live_slot(&self, conn: ConnId, what: &str) -> usize {
        let slot = usize::try_from(conn.0).ok().filter(|&s| s < SLOTS);
        let slot = slot.unwrap_or_else(|| panic!("{what} for {conn:?}, which was never opened"));
        let s = &self.slots[slot];
        assert!(s.opened, "{what} for {conn:?}, which was never opened");
        assert!(!s.closed, "{what} for {conn:?} after the engine closed it");
        slot
    }

    /// Checks an effect as the engine asks for it.
    fn performed(&mut self, effect: &Effect, resumed: Resumed) {
        match effect {
            Effect::SendMail(mail) => {
                let code = find_passcode(mail.body.expose()).expect("a mail without a passcode");
                assert!(code.len() == LENGTH && code.bytes().all(|b| ALPHABET.contains(&b)), "passcode {code:?}");
                assert_eq!(mail.expires_at, self.engine_now + self.config.passcode.lifetime);
                self.mails.push((mail.to.clone(), code.to_owned()));
                *self.mailed.entry((mail.to.clone(), code.to_owned())).or_default() += 1;
            }
            Effect::Write(WriteBatch::Creds(batch)) => self.session_write(batch, resumed),
            _ => {}
        }
    }

    /// A credentials write: a new session only after a consumed passcode,
    /// a rotation only of an expired, live session, with the lifetimes the
    /// configuration gives and its record of the token rotated away, and a
    /// revocation only of a session the engine wrote.
    fn session_write(&mut self, batch: &CredsBatch, resumed: Resumed) {
        match (&batch.expect, batch.ops.as_slice()) {
            (None, [CredsOp::PutSession(s)]) => {
                let started = resumed.consumed_at.expect("a session written without a passcode consumed first");
                self.check_record(s, started, started);
                self.new_session(s, None);
            }
            (
                Some(CredsExpectation::Session { master, expires_at }),
                [CredsOp::DeleteSession(old), CredsOp::PutSession(s), CredsOp::PutRotation(r)],
            ) if master == old => {
                assert_eq!(resumed.session_read, Some(*old), "a rotation that did not follow a read of its session");
                let model = *self.sessions.get(old).expect("a rotation of a session never written");
                assert_eq!(*expires_at, model.expires);
                assert!(self.engine_now >= model.expires, "a token rotated before it expired");
                assert!(self.alive(model.started, self.engine_now), "a session rotated past its age");
                assert_eq!((r.master, r.started_at, r.rotated_at), (*old, model.started, self.engine_now));
                self.check_record(s, model.started, self.engine_now);
                // Every rotation of one token writes the same successor:
                // only the first can commit, so the model keeps the first.
                if !self.sessions.contains_key(&s.master) {
                    self.new_session(s, Some(*old));
                }
            }
            (None, [CredsOp::RevokeSession { started_at, .. }]) => {
                assert!(
                    self.sessions.values().any(|m| m.started == *started_at),
                    "a revocation of a session the engine never wrote"
                );
                self.report.revocations += 1;
            }
            (Some(CredsExpectation::Password { .. }), [CredsOp::SetPassword { .. }]) => {}
            _ => panic!("an unexpected credentials write: {batch:?}"),
        }
    }

    fn check_record(&self, s: &SessionRecord, started: DateTime<Utc>, issued: DateTime<Utc>) {
        assert_eq!(s.started_at, started, "session start");
        assert_eq!(s.expires_at, self.expiry(started, issued), "token expiry");
    }

    fn new_session(&mut self, s: &SessionRecord, rotated_from: Option<MasterToken>) {
        let model = SessionModel {
            started: s.started_at,
            expires: s.expires_at,
            rotated_from,
            committed: false,
            handed_out: false,
        };
        assert!(self.sessions.insert(s.master, model).is_none(), "a master token written twice");
    }

    fn native_replies(&mut self, slot: usize) {
        let received = std::mem::take(&mut self.slots[slot].received);
        let mut start = 0;
        while let Some(end) = received[start..].iter().position(|&b| b == b'\n') {
            let text = std::str::from_utf8(&received[start..start + end]).expect("a reply that is not UTF-8");
            self.native_reply(slot, text);
            start += end + 1;
        }
        self.slots[slot].received = received[start..].to_vec();
    }

    fn native_reply(&mut self, slot: usize, text: &str) {
        self.report.replies += 1;
        let max_line = self.config.max_line;
        let s = &mut self.slots[slot];
        assert!(!s.last_reply, "a reply after {text:?}'s connection was told it is done");
        s.replies += 1;
        match error_code(text) {
            Some(ErrorCode::TooManyConnections) => {
                assert_eq!(s.replies, 1, "too_many_connections after other replies");
                s.last_reply = true;
                return;
            }
            Some(ErrorCode::LineTooLong) => {
                let frame = model_frame(&s.stream[s.answered..], max_line);
                assert!(frame == ModelFrame::TooLong, "line_too_long, but the next line is {frame:?}");
                s.last_reply = true;
                return;
            }
            _ => {}
        }
        let peer = s.peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let expect = match model_frame(&s.stream[s.answered..], max_line) {
            ModelFrame::Line { line, consumed } => {
                let expect = expect_of(line, peer, Listener::Native);
                s.answered += consumed;
                if s.answered > 64 * 1024 && s.answered * 2 > s.stream.len() {
                    s.stream.drain(..s.answered);
                    s.answered = 0;
                }
                expect
            }
            frame => panic!("reply {text:?} to no request (the next frame is {frame:?})"),
        };
        let fits = match &expect {
            Expect::Malformed => text == "error|malformed",
            Expect::NotServed => false,
            Expect::Token { .. } => {
                matches!(text, "authorized" | "unauthorized" | "error|store_unavailable")
                    || text.strip_prefix("renew|").is_some_and(is_token_hex)
            }
            Expect::Passcode { .. } => {
                matches!(
                    text,
                    "Passcode is sent"
                        | "False"
                        | "error|rate_limited"
                        | "error|busy"
                        | "error|store_unavailable"
                        | "error|mail_unavailable"
                )
            }
            Expect::Login { .. } => {
                matches!(text, "False" | "error|rate_limited" | "error|busy" | "error|store_unavailable")
                    || is_login(text)
            }
        };
        assert!(fits, "reply {text:?} to {expect:?}");
        self.meaning(slot, &expect, text);
    }

    fn legacy_reply(&mut self, slot: usize) {
        let received = std::mem::take(&mut self.slots[slot].received);
        let (text, used) = unpickle(&received).expect("a legacy transmit that is not one pickled str");
        assert_eq!(used, received.len(), "a legacy transmit with more than one reply");
        self.report.replies += 1;
        let s = &mut self.slots[slot];
        s.replies += 1;
        assert_eq!(s.replies, 1, "a legacy connection answered twice");
        let listener = s.listener.unwrap_or(Listener::LegacyLogin);
        let peer = s.peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let expect = expect_of(legacy::request(&s.kept), peer, listener);
        let fits = match &expect {
            Expect::Passcode { .. } => text == "Passcode is sent" || text == "False",
            Expect::Login { .. } => text == "False" || is_login(&text),
            _ => text == "False",
        };
        assert!(fits, "legacy reply {text:?} on {listener:?} to {expect:?}");
        self.meaning(slot, &expect, &text);
    }

    /// What a documented reply claims, checked against the model.
    fn meaning(&mut self, slot: usize, expect: &Expect, text: &str) {
        let peer = self.slots[slot].peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        match expect {
            Expect::Token { master, .. } if text == "authorized" => {
                self.report.authorized += 1;
                let reads = self.valid_reads.entry(*master).or_default();
                assert!(*reads > 0, "authorized without a read of a valid session (past its lifetime?)");
                *reads -= 1;
            }
            Expect::Token { master, mac } => {
                if let Some(hex) = text.strip_prefix("renew|") {
                    self.report.renewals += 1;
                    let model = self.hand_out(hex, *mac, peer);
                    assert_eq!(model.rotated_from, Some(*master), "renew| with a token of another session");
                }
            }
            Expect::Passcode { email } if text == "Passcode is sent" => {
                self.report.passcodes_sent += 1;
                let sent = self.sent_replies.entry(email.clone()).or_default();
                *sent += 1;
                let stored = self.stored_passcodes.get(email).copied().unwrap_or(0);
                assert!(*sent <= stored, "`Passcode is sent` for {email} without a stored passcode");
            }
            Expect::Login { email, code, mac } => {
                if let Some(hex) = text.strip_prefix(LOGIN_PREFIX) {
                    self.report.logins += 1;
                    let key = (email.clone(), code.clone());
                    let mailed = self.mailed.get(&key).copied().unwrap_or(0);
                    let logins = self.logged_in.entry(key).or_default();
                    *logins += 1;
                    assert!(*logins <= mailed, "passcode for {email} logged in {logins} times, mailed {mailed} times");
                    let model = self.hand_out(hex, *mac, peer);
                    assert_eq!(model.rotated_from, None, "a login reply with a renewed session's token");
                }
            }
            _ => {}
        }
    }

    /// A token in a reply: its session must be committed, and its token
    /// handed out once.
    fn hand_out(&mut self, hex: &str, mac: Mac, peer: IpAddr) -> SessionModel {
        let token = BaseToken::parse(hex.as_bytes()).expect("a token that is not 64 hex digits");
        let master = MasterToken::derive(&token, mac, peer);
        let model = self.sessions.get_mut(&master).expect("a token whose session was never written");
        assert!(model.committed, "a token handed out before its session was committed");
        // A successor is told to every check of its token within the grace;
        // a login's token goes out once.
        assert!(!model.handed_out || model.rotated_from.is_some(), "a login's token handed out twice");
        model.handed_out = true;
        let model = *model;
        self.tokens.push((token, mac));
        model
    }

    /// The line a [`RequestPick`] stands for, from what the run has seen.
    fn render(&self, pick: &RequestPick) -> String {
        let user = |u: u8| USERS[usize::from(u) % USERS.len()];
        let password = |u: u8, p: u8| match p % 3 {
            0 => user(u).2.password(),
            1 => "wrong",
            _ => user(u.wrapping_add(1)).2.password(),
        };
        let phone = |u: u8, p: u8| match p % 3 {
            0 => user(u).1,
            1 => "",
            _ => "+15559999",
        };
        let mac = |m: u8| MACS[usize::from(m) % MACS.len()];
        match pick {
            RequestPick::Passcode { mac: m, user: u, password: p, phone: ph } => {
                format!("{REQUIRE_PASSCODE}|{}|{}|{}|{}", mac(*m), password(*u, *p), phone(*u, *ph), user(*u).0)
            }
            RequestPick::Login { mac: m, user: u, password: p, phone: ph, passcode } => {
                let code = self.passcode(passcode);
                format!("{}|{}|{}|{}|{code}", mac(*m), user(*u).0, phone(*u, *ph), password(*u, *p))
            }
            RequestPick::Token { token, mac: m, tail } => {
                let (hex, own_mac) = self.token(token);
                let mac = match (m % 5, own_mac) {
                    (0, Some(own)) => own.to_string(),
                    (i, _) => MACS[usize::from(i) % MACS.len()].to_owned(),
                };
                format!("{hex}|{mac}|{}", TOKEN_TAILS[usize::from(*tail) % TOKEN_TAILS.len()])
            }
        }
    }

    fn passcode(&self, pick: &PasscodePick) -> String {
        let mailed = |i: u8| {
            self.mails.len().checked_sub(1 + usize::from(i) % self.mails.len().max(1)).map(|j| self.mails[j].1.clone())
        };
        match pick {
            PasscodePick::Mailed(i) => mailed(*i).unwrap_or_else(|| "AAAAAA".to_owned()),
            PasscodePick::Mangled(i) => {
                let code = mailed(*i).unwrap_or_else(|| "AAAAAA".to_owned());
                let mut bytes = code.into_bytes();
                let at = usize::from(*i) % LENGTH;
                if bytes[at].is_ascii_uppercase() && i & 0x80 != 0 {
                    bytes[at] = bytes[at].to_ascii_lowercase();
                } else {
                    let pos = ALPHABET.iter().position(|&c| c == bytes[at]).unwrap_or(0);
                    bytes[at] = ALPHABET[(pos + 1) % ALPHABET.len()];
                }
                String::from_utf8(bytes).unwrap_or_default()
            }
            PasscodePick::Guess(n) => {
                let mut n = *n;
                (0..LENGTH)
                    .map(|_| {
                        let c = ALPHABET[(n % 36) as usize];
                        n /= 36;
                        char::from(c)
                    })
                    .collect()
            }
        }
    }

    fn token(&self, pick: &TokenPick) -> (String, Option<Mac>) {
        let issued = |i: u8| {
            self.tokens.len().checked_sub(1 + usize::from(i) % self.tokens.len().max(1)).map(|j| self.tokens[j])
        };
        let hex = |t: &BaseToken| String::from_utf8_lossy(&t.to_hex()).into_owned();
        match pick {
            TokenPick::Issued(i) | TokenPick::Upper(i) | TokenPick::Mangled(i) => {
                let Some((token, mac)) = issued(*i) else { return ("0".repeat(64), None) };
                let mut text = hex(&token);
                match pick {
                    TokenPick::Upper(_) => text = text.to_ascii_uppercase(),
                    TokenPick::Mangled(_) => {
                        let at = usize::from(*i) % 64;
                        let flipped = if &text[at..=at] == "0" { "1" } else { "0" };
                        text.replace_range(at..=at, flipped);
                    }
                    _ => {}
                }
                (text, Some(mac))
            }
            TokenPick::Random(bytes) => (crate::hex::encode32(bytes).iter().map(|&b| char::from(b)).collect(), None),
        }
    }
}

/// The next frame of a native stream by the framing rules, written apart
/// from `codec::native`: a line ends at LF (a CR before it dropped) and
/// holds at most `max_line` bytes; a partial line may hold one byte more,
/// if that byte is a CR.
#[derive(PartialEq, Eq, Debug)]
enum ModelFrame<'a> {
    Line { line: &'a [u8], consumed: usize },
    TooLong,
    Partial,
}

fn model_frame(rest: &[u8], max_line: usize) -> ModelFrame<'_> {
    match rest.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let raw = &rest[..end];
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            if line.len() > max_line { ModelFrame::TooLong } else { ModelFrame::Line { line, consumed: end + 1 } }
        }
        None if rest.len() > max_line + 1 || (rest.len() == max_line + 1 && rest[max_line] != b'\r') => {
            ModelFrame::TooLong
        }
        None => ModelFrame::Partial,
    }
}

/// Whether a passcodes batch consumes a passcode for a login: the only one
/// that resets the account's failure streak.
fn is_consumption(batch: &WriteBatch) -> bool {
    match batch {
        WriteBatch::Passcodes(PasscodesBatch { expect: Some(_), ops }) => {
            ops.iter().any(|op| matches!(op, PasscodesOp::Reset(crate::counters::CounterKey::FailureStreak(_))))
        }
        _ => false,
    }
}
