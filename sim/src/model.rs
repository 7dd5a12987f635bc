//! The reference model: what the clients were told, checked against the
//! rules (docs/SIMULATION.md, "What it checks"). It sees what a client
//! sees (replies, mails), what a runtime sees (effects and their results,
//! the engine's notices), and the store's records after a crash; it never
//! asks the engine what it decided.
//!
//! Times are the engine's clock: the latest `now` it was handed in its
//! current life (the simulation's clock jumps move it).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use chrono::{DateTime, TimeDelta, Utc};
use tokenizer_auth_engine::testkit::{MemoryStore, test_verify};
use tokenizer_auth_engine::{
    BaseToken, Bound, Config, CounterKey, CredsOp, Effect, Mac, MasterToken, PasscodesOp, TokenTag, WriteBatch,
};

/// A session as the model knows it: its account, device and login.
#[derive(Clone, Debug)]
struct Family {
    email: String,
    /// The instant its login's reply came out: the login was decided no
    /// later.
    started_by: DateTime<Utc>,
    /// The instant its login's request reached the engine: the login was
    /// decided no earlier.
    started_from: DateTime<Utc>,
    /// The token it holds now, as far as any client was told.
    latest: String,
    /// Set when a reuse revoked it: the step of the engine in which the
    /// reply that said so came out.
    revoked_at: Option<u64>,
}

/// A token some reply carried.
#[derive(Clone, Debug)]
struct Token {
    family: usize,
    mac: Mac,
    ip: IpAddr,
    /// The first reply that carried it came out then: it was issued no
    /// later, so it expires no later than this plus the token lifetime.
    issued_by: DateTime<Utc>,
}

/// When something happened in the engine: its clock then, and how many
/// inputs it had been handed. The count orders what the clock cannot: the
/// clock stands still while it has gone back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stamp {
    /// The engine's clock.
    pub(crate) time: DateTime<Utc>,
    /// The inputs handed to any engine of the run so far.
    pub(crate) step: u64,
}

/// A request as the model checks its reply.
#[derive(Clone, Debug)]
pub(crate) struct Asked {
    /// The line as sent, without its line feed.
    pub(crate) line: String,
    /// Whose.
    pub(crate) email: String,
    /// The MAC and address it came with.
    pub(crate) mac: Mac,
    /// The address it came from.
    pub(crate) ip: IpAddr,
    /// When its last byte reached the engine: the engine decided no
    /// earlier.
    pub(crate) delivered: Stamp,
}

/// The rules, and what broke first.
pub(crate) struct Model {
    config: Config,
    /// Accepted mails per (email, passcode).
    mailed: HashMap<(String, String), u32>,
    /// Logins per (email, passcode).
    logins: HashMap<(String, String), u32>,
    families: Vec<Family>,
    tokens: HashMap<String, Token>,
    /// The one successor each rotated-away token was told of.
    successors: HashMap<String, String>,
    /// Password checks per window or streak (by its counter and start),
    /// and its bound.
    guesses: HashMap<(CounterKey, DateTime<Utc>), (u32, u32)>,
    /// Sessions (by master token) the store rotated away, whether or not
    /// any client heard of the successor.
    rotated: HashSet<MasterToken>,
    /// The latest engine time of the server's earlier lives.
    horizon: DateTime<Utc>,
    /// Logins committed, by the session's account, device and start.
    started: HashMap<(String, Mac, DateTime<Utc>), u32>,
    /// Accounts the store revoked a session of.
    revoked_accounts: HashSet<String>,
    /// The first violation.
    pub(crate) violation: Option<String>,
    /// Rules checked, by name (for the report).
    pub(crate) checked: HashMap<&'static str, u64>,
}

impl Model {
    /// A model for an engine with `config`.
    pub(crate) fn new(config: Config) -> Model {
        Model {
            config,
            mailed: HashMap::new(),
            logins: HashMap::new(),
            families: Vec::new(),
            tokens: HashMap::new(),
            successors: HashMap::new(),
            guesses: HashMap::new(),
            revoked_accounts: HashSet::new(),
            started: HashMap::new(),
            horizon: DateTime::<Utc>::MIN_UTC,
            rotated: HashSet::new(),
            violation: None,
            checked: HashMap::new(),
        }
    }

    fn fail(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }

    fn check(&mut self, rule: &'static str, holds: bool, what: impl FnOnce() -> String) {
        *self.checked.entry(rule).or_default() += 1;
        if !holds {
            self.fail(format!("{rule}: {}", what()));
        }
    }

    /// The relay accepted a mail with `code` for `email`.
    pub(crate) fn mailed(&mut self, email: &str, code: &str) {
        *self.mailed.entry((email.to_owned(), code.to_owned())).or_default() += 1;
    }

    /// A reply came out at engine time `at` for a request.
    pub(crate) fn reply(&mut self, asked: &Asked, reply: &str, at: Stamp) {
        let kind = asked.line.split('|').next().unwrap_or_default();
        if kind == "require_passcode" {
            return;
        }
        if BaseToken::parse(kind.as_bytes()).is_some() {
            self.token_reply(asked, kind, reply, at);
        } else {
            self.login_reply(asked, reply, at.time);
        }
    }

    fn login_reply(&mut self, asked: &Asked, reply: &str, at: DateTime<Utc>) {
        let Some(token) = reply.strip_prefix(tokenizer_auth_engine::LOGIN_PREFIX) else { return };
        let code = asked.line.rsplit('|').next().unwrap_or_default().to_owned();
        let key = (asked.email.clone(), code);
        let mailed = self.mailed.get(&key).copied().unwrap_or(0);
        let logins = self.logins.entry(key.clone()).or_default();
        *logins += 1;
        let logins = *logins;
        self.check("one login per passcode", logins <= mailed, || {
            format!("passcode {:?} of {} logged in {logins} times, mailed {mailed}", key.1, key.0)
        });
        let fresh = !self.tokens.contains_key(token);
        self.check("a login's token is new", fresh, || format!("login token of {} handed out before", key.0));
        let family = self.families.len();
        self.families.push(Family {
            email: asked.email.clone(),
            started_by: at,
            started_from: asked.delivered.time,
            latest: token.to_owned(),
            revoked_at: None,
        });
        self.tokens.insert(token.to_owned(), Token { family, mac: asked.mac, ip: asked.ip, issued_by: at });
    }

    fn token_reply(&mut self, asked: &Asked, presented: &str, reply: &str, at: Stamp) {
        let Some(known) = self.tokens.get(presented).cloned() else {
            // A token no reply carried (a guess, garbage): never authorized.
            self.check("an unknown token is refused", reply != "authorized", || {
                format!("{presented:.12}… authorized, never issued")
            });
            return;
        };
        let family = self.families[known.family].clone();
        let same_binding = known.mac == asked.mac && known.ip == asked.ip;
        match reply {
            "authorized" => {
                let ttl = self.config.session.token_ttl;
                let max_age = self.config.session.max_age;
                let d = asked.delivered.time;
                self.check("authorized only from the binding", same_binding, || {
                    format!("{presented:.12}… of {} authorized from {} {}", family.email, asked.mac, asked.ip)
                });
                self.check("authorized only within the token's lifetime", d < known.issued_by + ttl, || {
                    format!(
                        "{presented:.12}… of {} authorized {} ms past its lifetime",
                        family.email,
                        (d - known.issued_by - ttl).num_milliseconds()
                    )
                });
                let alive = max_age <= TimeDelta::zero() || d < family.started_by + max_age;
                self.check("authorized only within the session's age", alive, || {
                    format!("{presented:.12}… authorized past the session's absolute age")
                });
                let revoked = family.revoked_at.is_some_and(|r| r < asked.delivered.step);
                self.check("nothing of a revoked session is authorized", !revoked, || {
                    format!("{presented:.12}… of {} authorized after its session was revoked", family.email)
                });
            }
            "unauthorized" => {
                // A session within its absolute age is authorized or
                // renewed, never refused, unless it was revoked: a refusal
                // of the newest token a client was told of says the store
                // lost what the client was told.
                let max_age = self.config.session.max_age;
                let alive = max_age <= TimeDelta::zero() || at.time < family.started_from + max_age;
                // A renewal whose reply was lost (a connection that died, a
                // commit reported failed) rotated the token all the same:
                // after the grace, it is refused.
                let rotated = BaseToken::parse(presented.as_bytes())
                    .is_some_and(|t| self.rotated.contains(&MasterToken::derive(&t, asked.mac, asked.ip)));
                let current = family.latest == presented && same_binding && !rotated;
                let revoked = family.revoked_at.is_some() || self.revoked_accounts.contains(&family.email);
                self.check("an acknowledged session is not lost", !(alive && current && !revoked), || {
                    format!("{presented:.12}… of {} refused within its session's age", family.email)
                });
            }
            _ => {
                if let Some(new) = reply.strip_prefix("renew|") {
                    self.renewal(asked, presented, new, &known, same_binding, at.time);
                }
            }
        }
    }

    fn renewal(&mut self, asked: &Asked, old: &str, new: &str, known: &Token, same_binding: bool, at: DateTime<Utc>) {
        let email = self.families[known.family].email.clone();
        self.check("a renewal only to the binding", same_binding, || {
            format!("{old:.12}… of {email} renewed for {} {}", asked.mac, asked.ip)
        });
        let first = self.successors.entry(old.to_owned()).or_insert_with(|| new.to_owned()).clone();
        self.check("one successor per token", first == new, || {
            format!("{old:.12}… of {email} renewed to {first:.12}… and to {new:.12}…")
        });
        if let Some(token) = self.tokens.get(new) {
            let same = token.family == known.family;
            self.check("a successor belongs to its session", same, || format!("{new:.12}… handed to two sessions"));
        } else {
            // A successor first told of now may have been minted in an
            // earlier life of the server, whose clock ran ahead of this one.
            let issued_by = at.max(self.horizon);
            self.tokens.insert(new.to_owned(), Token { family: known.family, mac: known.mac, ip: known.ip, issued_by });
            self.families[known.family].latest = new.to_owned();
        }
    }

    /// A reply `unauthorized` to a rotated-away token, after which the store
    /// holds nothing of its session: the session was revoked then.
    pub(crate) fn revoked(&mut self, presented: &str, at: Stamp, store: &MemoryStore) {
        let Some(known) = self.tokens.get(presented) else { return };
        let family = &mut self.families[known.family];
        if family.revoked_at.is_none() && !holds_family(store, &family.email, known.mac) {
            family.revoked_at = Some(at.step);
        }
    }

    /// The store committed `batch` (whether or not the engine heard so, and
    /// also when a crash let a write in flight land): a revocation in it
    /// may end a session of its account without any client hearing of it.
    pub(crate) fn committed(&mut self, batch: &WriteBatch) {
        let b = match batch {
            WriteBatch::Creds(b) => b,
            WriteBatch::Passcodes(b) => {
                // A login reset its account's failure streak: the next
                // failure starts a new one, even at the same instant.
                for op in &b.ops {
                    if let PasscodesOp::Reset(key) = op {
                        self.guesses.retain(|(counted, _), _| counted != key);
                    }
                }
                return;
            }
        };
        let renewal = b.ops.iter().any(|op| matches!(op, CredsOp::DeleteSession(_)));
        for op in &b.ops {
            match op {
                CredsOp::RevokeSession { email, .. } => {
                    self.revoked_accounts.insert(email.clone());
                }
                CredsOp::PutRotation(r) => {
                    self.rotated.insert(r.master);
                }
                CredsOp::PutSession(s) if !renewal => {
                    *self.started.entry((s.email.clone(), s.mac, s.started_at)).or_default() += 1;
                }
                _ => {}
            }
        }
    }

    /// Whether `presented` is a token some client was told was rotated away.
    pub(crate) fn rotated_away(&self, presented: &str) -> bool {
        self.successors.contains_key(presented)
    }

    /// The engine asked for `verifies` in the step that took the commit of
    /// `batch`: each password checked there was let through by that
    /// batch's reservations. Every check uses a place of the passcode
    /// request windows it reserved in; a wrong password also uses a place
    /// of each failure window and of the account's failure streak. No
    /// window or streak may ever count more than its bound. The window (or
    /// streak) a reservation counted in is the one `store` holds after the
    /// commit: a reservation made for an older window (delayed, or made by
    /// a clock that went back) counts in the newer one.
    pub(crate) fn verified_after(&mut self, batch: &WriteBatch, verifies: &[&Effect], store: &MemoryStore) {
        let WriteBatch::Passcodes(b) = batch else { return };
        let bounds: Vec<(CounterKey, DateTime<Utc>, u32)> = b
            .ops
            .iter()
            .filter_map(|op| match op {
                PasscodesOp::Reserve(r) => {
                    let max = match r.bound {
                        Bound::Window { max, .. } | Bound::Streak { max, .. } => max,
                    };
                    let counted_in = store.counters.get(&r.key).map_or(r.at, |c| c.since);
                    Some((r.key.clone(), counted_in, max))
                }
                _ => None,
            })
            .collect();
        for effect in verifies {
            let Effect::VerifyPassword { hash, candidate } = effect else { continue };
            let wrong = !test_verify(hash, candidate);
            for (key, since, max) in &bounds {
                let counts = match key {
                    CounterKey::PasscodeRequestsByEmail(_) | CounterKey::PasscodeRequestsByIp(_) => true,
                    CounterKey::FailuresByEmail(_) | CounterKey::FailuresByIp(_) | CounterKey::FailureStreak(_) => {
                        wrong
                    }
                };
                if !counts {
                    continue;
                }
                let entry = self.guesses.entry((key.clone(), *since)).or_insert((0, *max));
                entry.0 += 1;
                let (count, max) = *entry;
                self.check("every brute-force bound holds exactly", count <= max, || {
                    format!("{count} password checks counted by {key:?} since {since} (bound {max})")
                });
            }
        }
    }

    /// The engine asked for a password check; `counted` says whether it
    /// did so in the step that took the commit of a reservation in the
    /// account's failure window. A check with no place reserved first is
    /// how a parallel burst gets past the bounds.
    pub(crate) fn password_checked(&mut self, counted: bool) {
        self.check("every password check is counted before it runs", counted, || {
            "a password was checked with no failure reserved for it first".to_owned()
        });
    }

    /// The server's life ended with its clock at `last`.
    pub(crate) fn life_ended(&mut self, last: DateTime<Utc>) {
        self.horizon = self.horizon.max(last);
    }

    /// After a crash, from the store alone: every login and renewal a client
    /// was told of is still there (its session, or the record of its
    /// rotation by a later renewal), unless a reuse revoked its session.
    pub(crate) fn after_crash(&mut self, store: &MemoryStore, key: &tokenizer_auth_engine::ServerKey) {
        let mut lost = None;
        for family in &self.families {
            if family.revoked_at.is_some() || self.revoked_accounts.contains(&family.email) {
                continue;
            }
            let Some(token) = self.tokens.get(&family.latest) else { continue };
            let Some(base) = BaseToken::parse(family.latest.as_bytes()) else { continue };
            let master = MasterToken::derive(&base, token.mac, token.ip);
            let kept = store.sessions.contains_key(&master) || store.rotations.contains_key(&TokenTag::of(key, &base));
            if !kept && lost.is_none() {
                lost = Some(format!(
                    "the session of {} (token {:.12}…) is gone after a crash",
                    family.email, family.latest
                ));
            }
        }
        self.check("no acknowledged login or renewal is lost in a crash", lost.is_none(), || lost.unwrap_or_default());
    }

    /// After a write committed: no session has two tokens at once. The
    /// store knows a session by its account, device and start, and two
    /// logins of one device in one millisecond (the engine's clock stands
    /// still while it has gone back) start two sessions alike: each key may
    /// hold as many tokens as logins committed under it.
    pub(crate) fn one_token_per_session(&mut self, store: &MemoryStore) {
        let mut seen: HashMap<(String, Mac, DateTime<Utc>), u32> = HashMap::new();
        let mut twice = None;
        for s in store.sessions.values() {
            let key = (s.email.clone(), s.mac, s.started_at);
            let n = seen.entry(key.clone()).or_default();
            *n += 1;
            if *n > self.started.get(&key).copied().unwrap_or(0) {
                twice = Some(s.email.clone());
            }
        }
        self.check("at most one successor exists", twice.is_none(), || {
            format!("a session of {} holds two tokens at once", twice.unwrap_or_default())
        });
    }
}

/// Whether the store holds any session of `email` on `mac`.
fn holds_family(store: &MemoryStore, email: &str, mac: Mac) -> bool {
    store.sessions.values().any(|s| s.email == email && s.mac == mac)
}
