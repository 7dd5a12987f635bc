//! The clients: devices that log in and use their tokens the way real ones
//! do (pipelining, renewing, reconnecting, sometimes misbehaving), and
//! guessers that try passwords and passcodes of the devices' accounts. A
//! client only decides what to send; the world (`world`) carries it over
//! the network.

use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, TimeDelta, Utc};
use rand_core::Rng;
use tokenizer_auth_engine::testkit::TestRng;
use tokenizer_auth_engine::{BaseToken, LOGIN_PREFIX, Mac};

use crate::profile::Profile;

/// What a client is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Role {
    /// Logs in, checks its token, renews it.
    Device,
    /// Tries wrong passwords and passcodes on `victim`'s account.
    Guesser {
        /// The device whose account it attacks.
        victim: usize,
    },
}

/// Which connection a batch of lines goes over.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Route {
    /// The client's own connection (opened if it has none).
    Own,
    /// A connection of its own from another address, as a thief would
    /// have: opened for this batch, closed after it.
    Elsewhere,
}

/// Lines to send, and how.
pub(crate) struct Plan {
    /// The lines, without line feeds.
    pub(crate) lines: Vec<String>,
    /// Over which connection.
    pub(crate) route: Route,
    /// Hang up after this many bytes of them, if set.
    pub(crate) hang_up_after: Option<usize>,
    /// The first line is garbage.
    pub(crate) garbage: bool,
    /// The line presents a rotated-away token.
    pub(crate) replay: bool,
}

/// One client.
pub(crate) struct Client {
    /// What it does.
    pub(crate) role: Role,
    /// Its account.
    pub(crate) email: String,
    /// The account's password.
    pub(crate) password: String,
    /// The phone on file.
    pub(crate) phone: String,
    /// Its device.
    pub(crate) mac: Mac,
    /// Its address.
    pub(crate) ip: IpAddr,
    /// Another address (a thief's, for presentations from elsewhere).
    pub(crate) elsewhere: IpAddr,
    /// The token it holds.
    pub(crate) token: Option<String>,
    /// Tokens it was told were rotated away.
    pub(crate) old: Vec<String>,
    /// Passcodes mailed to it and not yet used.
    pub(crate) inbox: Vec<String>,
    /// It asked for a passcode then and waits for the mail.
    pub(crate) mail_since: Option<DateTime<Utc>>,
    /// Replies it still waits for, and since when.
    pub(crate) outstanding: usize,
    /// When it last sent.
    pub(crate) sent_at: DateTime<Utc>,
    /// Once the faults have stopped: when it was last told `authorized`.
    pub(crate) finished: bool,
}

/// How long a client waits for replies before it gives up on its
/// connection (the server may have died with them).
pub(crate) const PATIENCE: TimeDelta = TimeDelta::seconds(30);

/// How long a device waits for a passcode mail before it asks again.
const MAIL_PATIENCE: TimeDelta = TimeDelta::seconds(20);

impl Client {
    /// Client `n` of a world.
    pub(crate) fn new(n: usize, role: Role, now: DateTime<Utc>) -> Client {
        let byte = |k: usize| u8::try_from(k % 250).unwrap_or(0) + 1;
        Client {
            role,
            email: format!("user{n}@example.com"),
            password: format!("password of user {n}"),
            phone: format!("555{n:04}"),
            mac: Mac::from_octets([0x02, 0, 0, 0, byte(n / 250), byte(n)]),
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, byte(n / 250), byte(n))),
            elsewhere: IpAddr::V4(Ipv4Addr::new(10, 9, byte(n / 250), byte(n))),
            token: None,
            old: Vec::new(),
            inbox: Vec::new(),
            mail_since: None,
            outstanding: 0,
            sent_at: now,
            finished: false,
        }
    }

    /// What to send now, if anything. `victim` is the account a guesser
    /// attacks.
    pub(crate) fn plan(
        &mut self,
        rng: &mut TestRng,
        profile: &Profile,
        now: DateTime<Utc>,
        victim: Option<&Client>,
    ) -> Option<Plan> {
        if self.outstanding > 0 {
            return None;
        }
        let mut chance = |p: f64| p > 0.0 && (rng.next_u64() % 1_000_000) as f64 / 1_000_000.0 < p;
        let mut lines = Vec::new();
        let mut route = Route::Own;
        let mut replay = false;
        match (self.role, victim) {
            (Role::Guesser { .. }, Some(v)) => {
                let n = 1 + (rng.next_u64() % profile.config.max_pipeline as u64) as usize;
                for i in 0..n {
                    lines.push(if (rng.next_u64() + i as u64).is_multiple_of(2) {
                        format!("require_passcode|{}|wrong {i}|{}|{}", v.mac, v.phone, v.email)
                    } else {
                        let code = format!("{:06}", rng.next_u64() % 1_000_000);
                        let password = if rng.next_u64().is_multiple_of(2) { v.password.as_str() } else { "wrong" };
                        format!("{}|{}|{}|{password}|{code}", v.mac, v.email, v.phone)
                    });
                }
            }
            (Role::Guesser { .. }, None) => return None,
            (Role::Device, _) => {
                if let Some(token) = &self.token {
                    if chance(profile.replay_old) && !self.old.is_empty() {
                        let old = &self.old[(rng.next_u64() % self.old.len() as u64) as usize];
                        lines.push(format!("{old}|{}|get", self.mac));
                        replay = true;
                        if rng.next_u64().is_multiple_of(2) {
                            route = Route::Elsewhere;
                        }
                    } else {
                        let n = 1 + (rng.next_u64() % profile.config.max_pipeline as u64) as usize;
                        lines.extend((0..n).map(|i| format!("{token}|{}|get|{i}", self.mac)));
                    }
                } else if let Some(code) = self.inbox.pop() {
                    lines.push(format!("{}|{}|{}|{}|{code}", self.mac, self.email, self.phone, self.password));
                } else if self.mail_since.is_some_and(|since| now < since + MAIL_PATIENCE) {
                    return None;
                } else {
                    self.mail_since = None;
                    lines
                        .push(format!("require_passcode|{}|{}|{}|{}", self.mac, self.password, self.phone, self.email));
                }
            }
        }
        let mut chance = |p: f64| p > 0.0 && (rng.next_u64() % 1_000_000) as f64 / 1_000_000.0 < p;
        let garbage = chance(profile.malformed);
        if garbage {
            let pick = (now.timestamp_millis().unsigned_abs() % 5) as usize;
            lines.insert(0, ["", "|||", "not a request", "zz|zz|zz", "\u{1}"][pick].to_owned());
        }
        let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
        let hang_up_after = chance(profile.hangup).then(|| (rng.next_u64() % bytes as u64) as usize);
        // A thief's presentation is not the device's: it awaits no reply of
        // it, nor of lines it hung up on.
        self.outstanding = if hang_up_after.is_some() || route == Route::Elsewhere { 0 } else { lines.len() };
        self.sent_at = now;
        Some(Plan { lines, route, hang_up_after, garbage, replay })
    }

    /// The reply to `line`, for this client's own bookkeeping.
    pub(crate) fn on_reply(&mut self, line: &str, reply: &str, now: DateTime<Utc>, calm: bool) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if self.role != Role::Device {
            return;
        }
        let first = line.split('|').next().unwrap_or_default();
        if first == "require_passcode" {
            self.mail_since = (reply == "Passcode is sent").then_some(now);
        } else if BaseToken::parse(first.as_bytes()).is_some() {
            let current = self.token.as_deref() == Some(first);
            if reply == "authorized" && current && calm {
                self.finished = true;
            } else if let Some(new) = reply.strip_prefix("renew|") {
                if current {
                    self.old.push(first.to_owned());
                    self.token = Some(new.to_owned());
                }
            } else if reply == "unauthorized" && current {
                self.token = None;
            }
        } else if let Some(token) = reply.strip_prefix(LOGIN_PREFIX) {
            self.token = Some(token.to_owned());
            self.old.clear();
        }
    }

    /// Its connection closed: the replies it waited for will not come.
    pub(crate) fn on_closed(&mut self) {
        self.outstanding = 0;
    }
}
