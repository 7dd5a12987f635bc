//! Everything the engine decides with that an operator may tune. Defaults
//! are listed in `docs/PROTOCOL.md` ("Defaults").

use chrono::TimeDelta;

use crate::codec::proxy::Cidr;
use crate::limits::Limits;
use crate::passcode::PasscodePolicy;
use crate::password::PasswordHash;
use crate::server_key::ServerKey;
use crate::session::SessionPolicy;

/// Engine configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Passcode lifetime and guesses.
    pub passcode: PasscodePolicy,
    /// Token lifetime and absolute session age.
    pub session: SessionPolicy,
    /// Rate limits and lockout.
    pub limits: Limits,
    /// Longest native line, line ending excluded.
    pub max_line: usize,
    /// A connection with nothing in flight and no input for this long is
    /// closed.
    pub idle_timeout: TimeDelta,
    /// A partial line that does not complete within this is dropped with its
    /// connection.
    pub partial_line_timeout: TimeDelta,
    /// How long a legacy connection may take to deliver the rest of a request
    /// whose first chunk was not whole.
    pub legacy_wait: TimeDelta,
    /// Open connections; one more is told `too_many_connections` and closed.
    pub max_connections: usize,
    /// Bytes owed to one peer (encoded, not yet taken by its socket) past
    /// which the engine takes no more requests from it.
    pub max_backlog: usize,
    /// A peer that takes none of the bytes owed to it for this long is
    /// dropped.
    pub write_timeout: TimeDelta,
    /// How long a connection whose write side is shut still reads (and
    /// discards) what arrives before it closes, so its last reply is not
    /// destroyed by a reset.
    pub close_linger: TimeDelta,
    /// After [`crate::Input::Shutdown`], how long requests in flight may
    /// take to finish and their replies to go out.
    pub shutdown_grace: TimeDelta,
    /// Requests in flight on one connection before the engine stops taking
    /// more lines from it (the runtime then stops reading the socket).
    pub max_pipeline: usize,
    /// Password verifications and hashes in flight; one more request that
    /// needs one is answered `busy`.
    pub max_password_checks: usize,
    /// The hash an unknown email's password is verified against, so that
    /// every credential check costs one verification. Runtimes replace the
    /// default with a hash made at start-up with their own parameters.
    pub dummy_password: PasswordHash,
    /// The balancers whose connections to the native listener start with a
    /// PROXY protocol header, which names the client (`codec::proxy`).
    /// Empty by default: nobody may say who the client is.
    pub proxy_protocol_from: Vec<Cidr>,
    /// The key of the passcode digests (docs/SECURITY.md, "Secrets at
    /// rest"). The default is a placeholder known to everyone, for tests;
    /// runtimes replace it with the server's key at start-up. A capture
    /// records only its fingerprint.
    pub server_key: ServerKey,
}

/// A placeholder dummy hash (argon2id at the minimum parameters the project
/// uses). Runtimes make their own at start-up.
pub const DEFAULT_DUMMY_PASSWORD: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$dG9rZW5pemVyLWF1dGgtZHVtbXk$y8yL4pu5KeVOWd1GMc2Y4X4cnNU7dWRhQ2kDxTqJ0yw";

/// The longest duration a setting may have (100 years): far past any
/// sensible one, and far from the ends of time arithmetic.
pub const MAX_DURATION: TimeDelta = TimeDelta::days(36_500);

/// The longest native line a setting may allow (1 GiB).
pub const MAX_LINE: usize = 1 << 30;

impl Config {
    /// Checks that every setting is in its range: durations between zero
    /// and [`MAX_DURATION`], the line limit at most [`MAX_LINE`]. Settings
    /// from an operator or a capture file pass here before an engine runs
    /// with them; within these ranges the engine's arithmetic cannot
    /// overflow.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        let durations = [
            ("passcode_ttl", self.passcode.lifetime),
            ("token_ttl", self.session.token_ttl),
            ("session_max_age", self.session.max_age),
            ("renew_grace", self.session.renew_grace),
            ("passcode_requests_per_email period", l.passcode_requests_per_email.period),
            ("passcode_requests_per_ip period", l.passcode_requests_per_ip.period),
            ("failures_per_email period", l.failures_per_email.period),
            ("failures_per_ip period", l.failures_per_ip.period),
            ("lockout", l.lockout),
            ("idle_timeout", self.idle_timeout),
            ("partial_line_timeout", self.partial_line_timeout),
            ("legacy_wait", self.legacy_wait),
            ("write_timeout", self.write_timeout),
            ("close_linger", self.close_linger),
            ("shutdown_grace", self.shutdown_grace),
        ];
        for (name, d) in durations {
            if d < TimeDelta::zero() || d > MAX_DURATION {
                return Err(format!("{name} is out of range (0 to 36500 days)"));
            }
        }
        if l.ipv6_prefix > 128 {
            return Err("ipv6_limit_prefix is out of range (0 to 128)".to_owned());
        }
        if self.max_line > MAX_LINE {
            return Err(format!("max_line is out of range (at most {MAX_LINE})"));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            passcode: PasscodePolicy::default(),
            session: SessionPolicy::default(),
            limits: Limits::default(),
            max_line: 4096,
            idle_timeout: TimeDelta::seconds(60),
            partial_line_timeout: TimeDelta::seconds(10),
            legacy_wait: TimeDelta::milliseconds(200),
            max_connections: 10_000,
            max_backlog: 64 * 1024,
            write_timeout: TimeDelta::seconds(10),
            close_linger: TimeDelta::seconds(2),
            shutdown_grace: TimeDelta::seconds(10),
            max_pipeline: 64,
            max_password_checks: 32,
            dummy_password: PasswordHash::Phc(DEFAULT_DUMMY_PASSWORD.to_owned()),
            proxy_protocol_from: Vec::new(),
            server_key: ServerKey::default(),
        }
    }
}
