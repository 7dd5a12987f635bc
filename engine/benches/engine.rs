//! Engine benchmarks: the engine alone, driven directly (not through
//! `World`, which clones every effect into a log), with its effects carried
//! out synchronously against the testkit's in-memory store.
//!
//! - `token_check/authorized`: one token request line on an open native
//!   connection, its session read from a store of 100,000 sessions, and the
//!   `authorized` reply. One element is one token check (three SHA-256
//!   included: the master token is derived from the base token, the MAC and
//!   the IP).
//! - `token_check/pipelined_16`: sixteen such lines in one receive, their
//!   sixteen reads completed in order. Sixteen elements per iteration.
//! - `login/no_hashing`: a whole login on a native connection, passcode
//!   request then login, with the fast stand-in hasher (`test_verify`), the
//!   mail captured in memory, and rate limits disabled. Each iteration logs
//!   in a user from a pool as if fresh, and its session is removed after.
//!
//! Run with:
//!
//! ```text
//! cargo bench -p tokenizer-auth-engine --all-features --bench engine
//! ```

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand_core::Rng;
use tokenizer_auth_engine::mail::find_passcode;
use tokenizer_auth_engine::testkit::{MemoryStore, TestRng, epoch, test_hash, test_verify};
use tokenizer_auth_engine::{
    BaseToken, Config, ConnId, CredsOp, Effect, EffectId, EffectResult, Engine, Input, LOGIN_PREFIX, Limits, Listener,
    Lookup, Mac, Mail, MasterToken, Output, SessionRecord, Window, WriteBatch,
};

/// Sessions in the store for the token-check benchmarks.
const SESSIONS: usize = 100_000;
/// Token request lines per receive in the pipelined benchmark.
const PIPELINE: usize = 16;
/// Bytes of one token request line: 64 hex digits, `|`, a 17-character MAC,
/// `|get` and a line feed.
const LINE: usize = 64 + 1 + 17 + 4 + 1;
/// Users the login benchmark cycles through.
const USERS: usize = 1024;

const AUTHORIZED: &[u8] = b"authorized\n";

/// The address every benchmark client connects from.
fn client_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 44))
}

fn hex32(bytes: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

/// A store holding [`SESSIONS`] valid sessions for [`client_ip`], and the
/// request lines presenting their tokens, back to back, [`LINE`] bytes each.
struct TokenFixture {
    store: MemoryStore,
    lines: Vec<u8>,
    /// The base tokens the sessions were made from (what clients hold).
    tokens: Vec<BaseToken>,
}

impl TokenFixture {
    fn new() -> TokenFixture {
        let mut rng = TestRng::new(0x70_6b_65_6e);
        let ip = client_ip();
        let started = epoch();
        let mut store = MemoryStore::default();
        store.sessions.reserve(SESSIONS);
        let mut lines = Vec::with_capacity(SESSIONS * LINE);
        let mut tokens = Vec::with_capacity(SESSIONS);
        for i in 0..SESSIONS {
            let mut raw = [0u8; 32];
            rng.fill_bytes(&mut raw);
            let token = BaseToken::parse(&hex32(&raw)).expect("64 hex digits");
            let mut octets = [0u8; 6];
            rng.fill_bytes(&mut octets);
            let mac = Mac::from_octets(octets);
            let master = MasterToken::derive(&token, mac, ip);
            store.sessions.insert(
                master,
                SessionRecord {
                    master,
                    email: format!("user{i}@example.com"),
                    mac,
                    started_at: started,
                    expires_at: started + TimeDelta::hours(1),
                },
            );
            let start = lines.len();
            lines.extend_from_slice(&token.to_hex());
            lines.push(b'|');
            lines.extend_from_slice(mac.to_string().as_bytes());
            lines.extend_from_slice(b"|get\n");
            assert_eq!(lines.len() - start, LINE);
            tokens.push(token);
        }
        assert_eq!(store.sessions.len(), SESSIONS, "master tokens collided");
        TokenFixture { store, lines, tokens }
    }

    /// `count` request lines starting with session `first`.
    fn lines(&self, first: usize, count: usize) -> &[u8] {
        &self.lines[first * LINE..(first + count) * LINE]
    }
}

/// An engine with one native connection whose only effects are store reads,
/// completed at once against the in-memory store.
struct TokenDriver {
    engine: Engine,
    store: MemoryStore,
    rng: TestRng,
    now: DateTime<Utc>,
    conn: ConnId,
    reads: Vec<(EffectId, Lookup)>,
    received: Vec<u8>,
}

impl TokenDriver {
    fn new(store: MemoryStore) -> TokenDriver {
        let mut driver = TokenDriver {
            engine: Engine::new(Config::default()),
            store,
            rng: TestRng::new(7),
            now: epoch() + TimeDelta::seconds(1),
            conn: ConnId(1),
            reads: Vec::with_capacity(PIPELINE),
            received: Vec::with_capacity(PIPELINE * AUTHORIZED.len()),
        };
        let input = Input::Opened { conn: driver.conn, peer: client_ip(), listener: Listener::Native };
        driver.engine.handle(driver.now, &mut driver.rng, input);
        driver.drain();
        driver
    }

    fn drain(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Transmit { bytes, .. } => self.received.extend_from_slice(&bytes),
                Output::Perform { id, effect: Effect::Read(lookup) } => self.reads.push((id, lookup)),
                other => panic!("unexpected output in a token check: {other:?}"),
            }
        }
    }

    /// Feeds `bytes`, completes the reads they cause, and leaves the replies
    /// in `received`.
    fn check(&mut self, bytes: &[u8]) {
        self.received.clear();
        self.engine.handle(self.now, &mut self.rng, Input::Received { conn: self.conn, bytes });
        self.drain();
        let mut i = 0;
        while i < self.reads.len() {
            let id = self.reads[i].0;
            let result = self.store.read(&self.reads[i].1);
            self.engine.handle(self.now, &mut self.rng, Input::Completed { id, result });
            self.drain();
            i += 1;
        }
        self.reads.clear();
        // The socket takes the replies, as a runtime reports after its
        // write.
        let bytes = self.received.len();
        self.engine.handle(self.now, &mut self.rng, Input::Sent { conn: self.conn, bytes });
        self.drain();
    }
}

fn token_check(c: &mut Criterion) {
    let fixture = TokenFixture::new();
    let mut group = c.benchmark_group("token_check");
    group.measurement_time(Duration::from_secs(5)).sample_size(50);

    let mut driver = TokenDriver::new(fixture.store.clone());
    for i in [0, 1, SESSIONS - 1] {
        assert_eq!(BaseToken::parse(&fixture.lines(i, 1)[..64]), Some(fixture.tokens[i]));
        driver.check(fixture.lines(i, 1));
        assert_eq!(driver.received, AUTHORIZED, "session {i}");
    }
    // A token presented from another device is refused: the store is really
    // consulted.
    let mut wrong = fixture.lines(0, 1).to_vec();
    let digit = &mut wrong[LINE - 6];
    *digit = if *digit == b'0' { b'1' } else { b'0' };
    driver.check(&wrong);
    assert_eq!(driver.received, b"unauthorized\n");
    group.throughput(Throughput::Elements(1));
    let mut next = 0;
    group.bench_function("authorized", |b| {
        b.iter(|| {
            driver.check(fixture.lines(next, 1));
            next = (next + 1) % SESSIONS;
            assert!(driver.received == AUTHORIZED);
        })
    });

    // The same, recording a capture (`serve --capture`): what capturing
    // costs. The records are taken after every check, as a runtime would
    // take them to write them out.
    let mut driver = TokenDriver::new(fixture.store.clone());
    let header = driver.engine.start_capture();
    assert!(!header.is_empty());
    let mut captured = 0usize;
    let mut next = 0;
    group.bench_function("authorized_captured", |b| {
        b.iter(|| {
            driver.check(fixture.lines(next, 1));
            captured += driver.engine.take_capture().len();
            next = (next + 1) % SESSIONS;
            assert!(driver.received == AUTHORIZED);
        })
    });
    assert!(captured > 0);

    let mut driver = TokenDriver::new(fixture.store.clone());
    let expected = AUTHORIZED.repeat(PIPELINE);
    driver.check(fixture.lines(0, PIPELINE));
    assert_eq!(driver.received, expected);
    group.throughput(Throughput::Elements(PIPELINE as u64));
    let mut next = 0;
    group.bench_function("pipelined_16", |b| {
        b.iter(|| {
            driver.check(fixture.lines(next, PIPELINE));
            next = (next + PIPELINE) % SESSIONS;
            assert!(driver.received == expected);
        })
    });
    group.finish();
}

/// One account of the login pool, with its request lines.
struct User {
    mac: Mac,
    /// `require_passcode|MAC|PASSWORD|PHONE|EMAIL\n`
    passcode_request: Vec<u8>,
    /// `MAC|EMAIL|PHONE|PASSWORD|`, the passcode to follow.
    login_prefix: Vec<u8>,
}

/// An engine with one native connection, its effects carried out at once
/// against the store, the stand-in hasher and an in-memory outbox.
struct LoginDriver {
    engine: Engine,
    store: MemoryStore,
    rng: TestRng,
    now: DateTime<Utc>,
    conn: ConnId,
    pending: VecDeque<(EffectId, Effect)>,
    received: Vec<u8>,
    mailbox: Vec<Mail>,
    /// The session the last login stored.
    session: Option<MasterToken>,
    line: Vec<u8>,
}

impl LoginDriver {
    fn new(config: Config, store: MemoryStore) -> LoginDriver {
        let mut driver = LoginDriver {
            engine: Engine::new(config),
            store,
            rng: TestRng::new(11),
            now: epoch(),
            conn: ConnId(1),
            pending: VecDeque::with_capacity(4),
            received: Vec::with_capacity(256),
            mailbox: Vec::with_capacity(1),
            session: None,
            line: Vec::with_capacity(256),
        };
        let input = Input::Opened { conn: driver.conn, peer: client_ip(), listener: Listener::Native };
        driver.engine.handle(driver.now, &mut driver.rng, input);
        driver.drain();
        driver
    }

    /// Drains the outputs, then fires the connection timers that are due.
    fn drain(&mut self) {
        loop {
            let mut taken = 0;
            while let Some(output) = self.engine.poll_output() {
                match output {
                    Output::Transmit { bytes, .. } => {
                        taken += bytes.len();
                        self.received.extend_from_slice(&bytes);
                    }
                    Output::Perform { id, effect } => self.pending.push_back((id, effect)),
                    other => panic!("unexpected output during a login: {other:?}"),
                }
            }
            if taken > 0 {
                self.engine.handle(self.now, &mut self.rng, Input::Sent { conn: self.conn, bytes: taken });
                continue;
            }
            match self.engine.poll_timeout() {
                Some(at) if at <= self.now => self.engine.handle(self.now, &mut self.rng, Input::Timeout),
                _ => break,
            }
        }
    }

    fn execute(&mut self, effect: Effect) -> EffectResult {
        match effect {
            Effect::Read(lookup) => self.store.read(&lookup),
            Effect::Write(batch) => {
                if let WriteBatch::Creds(creds) = &batch {
                    for op in &creds.ops {
                        if let CredsOp::PutSession(session) = op {
                            self.session = Some(session.master);
                        }
                    }
                }
                self.store.write(&batch)
            }
            Effect::VerifyPassword { hash, candidate } => EffectResult::Verified(test_verify(&hash, &candidate)),
            Effect::HashPassword { password } => EffectResult::Hashed(test_hash(password.expose())),
            Effect::SendMail(mail) => {
                self.mailbox.push(mail);
                EffectResult::Sent
            }
        }
    }

    /// Sends one request line and completes its effects, in order, until
    /// none are left; the reply is in `received`.
    fn request(&mut self, line: &[u8]) {
        self.received.clear();
        self.engine.handle(self.now, &mut self.rng, Input::Received { conn: self.conn, bytes: line });
        self.drain();
        while let Some((id, effect)) = self.pending.pop_front() {
            let result = self.execute(effect);
            self.engine.handle(self.now, &mut self.rng, Input::Completed { id, result });
            self.drain();
        }
    }

    /// A whole login for `user`: returns the session it stored, which is
    /// then removed again.
    fn login(&mut self, user: &User) -> MasterToken {
        self.now += TimeDelta::milliseconds(1);
        self.request(&user.passcode_request);
        assert!(self.received == b"Passcode is sent\n", "{:?}", String::from_utf8_lossy(&self.received));
        let mail = self.mailbox.pop().expect("a passcode mail");
        let code = find_passcode(mail.body.expose()).expect("a passcode in the mail");
        self.line.clear();
        self.line.extend_from_slice(&user.login_prefix);
        self.line.extend_from_slice(code.as_bytes());
        self.line.push(b'\n');
        drop(mail);
        let line = std::mem::take(&mut self.line);
        self.request(&line);
        self.line = line;
        let reply = &self.received;
        assert!(
            reply.len() == LOGIN_PREFIX.len() + 64 + 1 && reply.starts_with(LOGIN_PREFIX.as_bytes()),
            "{:?}",
            String::from_utf8_lossy(reply)
        );
        let master = self.session.take().expect("a stored session");
        self.store.sessions.remove(&master);
        master
    }
}

fn login(c: &mut Criterion) {
    let off = Window::new(0, TimeDelta::minutes(15));
    let config = Config {
        limits: Limits {
            passcode_requests_per_email: off,
            passcode_requests_per_ip: off,
            failures_per_email: off,
            failures_per_ip: off,
            ..Limits::default()
        },
        ..Config::default()
    };
    let mut store = MemoryStore::default();
    let mut rng = TestRng::new(0x10_9e_11);
    let users: Vec<User> = (0..USERS)
        .map(|i| {
            let email = format!("user{i}@example.com");
            let phone = format!("+1555{i:07}");
            let password = format!("correct horse battery staple {i}");
            store.add_user(&email, &phone, &password);
            let mut octets = [0u8; 6];
            rng.fill_bytes(&mut octets);
            let mac = Mac::from_octets(octets);
            User {
                mac,
                passcode_request: format!("require_passcode|{mac}|{password}|{phone}|{email}\n").into_bytes(),
                login_prefix: format!("{mac}|{email}|{phone}|{password}|").into_bytes(),
            }
        })
        .collect();

    let mut driver = LoginDriver::new(config, store);
    // The login really stores the session the reply's token names.
    {
        let user = &users[0];
        driver.now += TimeDelta::milliseconds(1);
        driver.request(&user.passcode_request);
        assert_eq!(driver.received, b"Passcode is sent\n");
        let mail = driver.mailbox.pop().expect("a passcode mail");
        let code = find_passcode(mail.body.expose()).expect("a passcode").to_owned();
        let mut line = user.login_prefix.clone();
        line.extend_from_slice(code.as_bytes());
        line.push(b'\n');
        driver.request(&line);
        let reply = driver.received.strip_prefix(LOGIN_PREFIX.as_bytes()).expect("a login reply");
        let token = BaseToken::parse(&reply[..64]).expect("a base token");
        let master = MasterToken::derive(&token, user.mac, client_ip());
        assert_eq!(driver.session, Some(master));
        assert!(driver.store.sessions.contains_key(&master));
        driver.store.sessions.remove(&master);
        driver.session = None;
    }
    let before = (driver.store.passcodes.len(), driver.store.sessions.len());
    for user in &users[..4] {
        driver.login(user);
    }
    assert_eq!((driver.store.passcodes.len(), driver.store.sessions.len()), before, "logins leave state behind");

    let mut group = c.benchmark_group("login");
    group.measurement_time(Duration::from_secs(5)).sample_size(50);
    group.throughput(Throughput::Elements(1));
    let mut next = 0;
    group.bench_function("no_hashing", |b| {
        b.iter(|| {
            let master = driver.login(&users[next]);
            next = (next + 1) % USERS;
            master
        })
    });
    group.finish();
    assert!(driver.store.sessions.is_empty() && driver.store.passcodes.is_empty());
}

criterion_group!(benches, token_check, login);
criterion_main!(benches);
