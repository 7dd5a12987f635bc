//! A fault profile: everything a seed decides about the world before the
//! simulation starts, drawn from the seed alone, so a seed names one world.
//! One seed in eight is calm (no faults at all), so every run also checks
//! the rules where nothing goes wrong.

use std::fmt;

use chrono::TimeDelta;
use rand_core::Rng;
use tokenizer_auth_engine::testkit::TestRng;
use tokenizer_auth_engine::{Config, Limits, Window};

/// What the seed chose.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Devices that log in and use their tokens.
    pub devices: usize,
    /// Clients that guess passwords and passcodes of the devices' accounts.
    pub guessers: usize,
    /// Network delay of one hop, in milliseconds: from 0 to this.
    pub net_delay_ms: u32,
    /// Chance that a send is split into pieces that arrive apart.
    pub split: f64,
    /// Chance that a client hangs up in the middle of a line.
    pub hangup: f64,
    /// Chance that a request line is garbage.
    pub malformed: f64,
    /// Chance that a device stops reading for a while.
    pub stall: f64,
    /// Chance that a device presents one of its rotated-away tokens (from
    /// its own device or, as a thief would, from another address).
    pub replay_old: f64,
    /// Store latency, in milliseconds: from 0 to this.
    pub store_latency_ms: u32,
    /// Chance that a read or write fails before anything is committed.
    pub store_error: f64,
    /// Chance that a write commits but is reported failed.
    pub lost_ack: f64,
    /// Chance, per write, that the server crashes while the write is in
    /// flight (the engine, and the writes whose results are not yet back,
    /// may be lost) and restarts from the store.
    pub crash: f64,
    /// Mail relay delay, in milliseconds: from 0 to this.
    pub mail_delay_ms: u32,
    /// Chance that an accepted mail never arrives.
    pub mail_loss: f64,
    /// Chance that an accepted mail arrives twice.
    pub mail_dup: f64,
    /// Chance that the relay answers 4xx (try later).
    pub mail_4xx: f64,
    /// Chance that the relay answers 5xx (refused).
    pub mail_5xx: f64,
    /// Chance, per request, that the server's clock jumps (forward up to a
    /// minute, or back up to half a minute).
    pub clock_jump: f64,
    /// The engine configuration: short lifetimes and tight limits, so that
    /// renewals, the grace, lockouts and windows all happen.
    pub config: Config,
}

impl Profile {
    /// The profile of `seed`.
    pub fn from_seed(seed: u64) -> Profile {
        let mut rng = TestRng::new(seed ^ 0x005e_ed0f_fa17);
        let mut pick = |lo: u64, hi: u64| lo + rng.next_u64() % (hi - lo + 1);
        let calm = pick(0, 7) == 0;
        let mut chance = |max_per_mille: u64| if calm { 0.0 } else { pick(0, max_per_mille) as f64 / 1000.0 };
        let (split, hangup, malformed, stall, replay_old) =
            (chance(300), chance(20), chance(30), chance(10), chance(20));
        let (store_error, lost_ack, crash) = (chance(30), chance(20), chance(5));
        let (mail_loss, mail_dup, mail_4xx, mail_5xx) = (chance(100), chance(100), chance(100), chance(50));
        let clock_jump = chance(5) / 10.0;
        let mut pick = |lo: u64, hi: u64| lo + rng.next_u64() % (hi - lo + 1);
        let token_ttl = TimeDelta::seconds(pick(5, 60) as i64);
        let max_age = match pick(0, 2) {
            0 => TimeDelta::zero(),
            _ => token_ttl * pick(2, 10) as i32,
        };
        let minute = TimeDelta::minutes(1);
        let mut config = Config::default();
        config.session.token_ttl = token_ttl;
        config.session.max_age = max_age;
        config.session.renew_grace = TimeDelta::milliseconds(pick(0, 5_000) as i64);
        config.passcode.lifetime = TimeDelta::seconds(pick(30, 180) as i64);
        config.limits = Limits {
            passcode_requests_per_email: Window::new(pick(3, 10) as u32, minute),
            passcode_requests_per_ip: Window::new(pick(10, 40) as u32, minute),
            failures_per_email: Window::new(pick(3, 20) as u32, minute),
            failures_per_ip: Window::new(pick(5, 40) as u32, minute),
            max_consecutive_failures: pick(5, 30) as u32,
            lockout: TimeDelta::seconds(pick(10, 60) as i64),
            ipv6_prefix: 64,
        };
        config.max_pipeline = pick(2, 16) as usize;
        config.max_password_checks = pick(2, 32) as usize;
        config.idle_timeout = TimeDelta::seconds(30);
        config.partial_line_timeout = TimeDelta::seconds(5);
        config.write_timeout = TimeDelta::seconds(10);
        config.shutdown_grace = TimeDelta::seconds(5);
        Profile {
            devices: pick(4, 40) as usize,
            guessers: pick(0, 4) as usize,
            net_delay_ms: pick(0, 50) as u32,
            split,
            hangup,
            malformed,
            stall,
            replay_old,
            store_latency_ms: pick(0, 40) as u32,
            store_error,
            lost_ack,
            crash,
            mail_delay_ms: pick(0, 5_000) as u32,
            mail_loss,
            mail_dup,
            mail_4xx,
            mail_5xx,
            clock_jump,
            config,
        }
    }

    /// The same world with every fault off: the end of a run, when every
    /// client must finish.
    pub fn calm(&self) -> Profile {
        Profile {
            split: 0.0,
            hangup: 0.0,
            malformed: 0.0,
            stall: 0.0,
            replay_old: 0.0,
            store_error: 0.0,
            lost_ack: 0.0,
            crash: 0.0,
            mail_loss: 0.0,
            mail_dup: 0.0,
            mail_4xx: 0.0,
            mail_5xx: 0.0,
            clock_jump: 0.0,
            ..self.clone()
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let l = &c.limits;
        write!(
            f,
            "devices={} guessers={} net_delay<={}ms split={} hangup={} malformed={} stall={} replay_old={} \
             store_latency<={}ms store_error={} lost_ack={} crash={} mail_delay<={}ms mail_loss={} mail_dup={} \
             mail_4xx={} mail_5xx={} clock_jump={} token_ttl={}s max_age={}s renew_grace={}ms passcode_ttl={}s \
             failures_per_email={} failures_per_ip={} max_consecutive_failures={} lockout={}s \
             passcode_requests_per_email={} max_pipeline={} max_password_checks={}",
            self.devices,
            self.guessers,
            self.net_delay_ms,
            self.split,
            self.hangup,
            self.malformed,
            self.stall,
            self.replay_old,
            self.store_latency_ms,
            self.store_error,
            self.lost_ack,
            self.crash,
            self.mail_delay_ms,
            self.mail_loss,
            self.mail_dup,
            self.mail_4xx,
            self.mail_5xx,
            self.clock_jump,
            c.session.token_ttl.num_seconds(),
            c.session.max_age.num_seconds(),
            c.session.renew_grace.num_milliseconds(),
            c.passcode.lifetime.num_seconds(),
            l.failures_per_email.max,
            l.failures_per_ip.max,
            l.max_consecutive_failures,
            l.lockout.num_seconds(),
            l.passcode_requests_per_email.max,
            c.max_pipeline,
            c.max_password_checks,
        )
    }
}
