//! `user` and `session`: administration on the real files, each change
//! recorded in the audit trail.

use std::io::{BufRead, IsTerminal, Write};
use std::net::IpAddr;

use tokenizer_auth_effects::audit::{AuditLine, append_one};
use tokenizer_auth_effects::password::{Cost, PasswordHasher};
use tokenizer_auth_effects::store::Store;
use tokenizer_auth_engine::{Mac, NewPasswordRule, Secret};

use super::config::Configuration;
use super::{Failure, SessionCommand, UserCommand};

/// The store the configuration names: the data folder's files, or
/// `store_url`.
pub(super) fn open(config: &Configuration) -> Result<Store, Failure> {
    let store = config.store();
    Store::open(&store).map_err(|e| Failure::Other(format!("store {}: {e}", store.describe())))
}

/// What an admin command changed, for the audit trail.
pub(super) struct Change<'a> {
    /// The event (`user_added`, `sessions_revoked`, ...).
    pub(super) event: &'a str,
    /// Whose account.
    pub(super) email: Option<&'a str>,
    /// Whose address (`limits reset IP`).
    pub(super) ip: Option<IpAddr>,
    /// Which device.
    pub(super) mac: Option<Mac>,
    /// More, in words.
    pub(super) detail: Option<String>,
}

/// Appends `change` to the audit trail, with who ran the command. The
/// change is made by then; if the line cannot be written, the command
/// says so and fails, so that no change goes unrecorded unnoticed.
pub(super) fn record(config: &Configuration, change: Change<'_>) -> Result<(), Failure> {
    let line = AuditLine {
        time: AuditLine::time(chrono::Utc::now()),
        event: change.event,
        outcome: "done",
        email: change.email,
        ip: change.ip,
        mac: change.mac.map(|m| m.to_string()),
        listener: None,
        detail: change.detail,
        by: Some(operator()),
    };
    append_one(&config.audit_log(), &line)
        .map_err(|e| Failure::Other(format!("done, but the audit log could not record it: {e}")))
}

/// Who runs this command: the user the environment names, and the uid
/// that owns the process (read from `/proc/self`, so a changed `$USER`
/// cannot hide it).
fn operator() -> String {
    let name = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "?".to_owned());
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(proc) = std::fs::metadata("/proc/self") {
            return format!("{name} (uid {})", proc.uid());
        }
    }
    name
}

fn change<'a>(event: &'a str, email: Option<&'a str>) -> Change<'a> {
    Change { event, email, ip: None, mac: None, detail: None }
}

fn hasher() -> Result<PasswordHasher, Failure> {
    Ok(PasswordHasher::new(Cost::PRODUCT)?)
}

/// A new password for the account (`email`, `phone`), from standard input
/// (`--password-stdin`: one line) or from a prompt asked twice. Never from
/// the command line, where other users of the machine could read it. The
/// engine's rule says what it must be (length, not only whitespace, a
/// request line can carry it); a refusal is a usage error (exit 2).
fn read_password(config: &Configuration, email: &str, phone: &str, from_stdin: bool) -> Result<Secret, Failure> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Secret::new(line.trim_end_matches(['\r', '\n']))
    } else {
        if !std::io::stdin().is_terminal() {
            return Err(Failure::Usage("no terminal to ask for the password: use --password-stdin".into()));
        }
        let first = Secret::new(rpassword::prompt_password("Password: ")?);
        let again = Secret::new(rpassword::prompt_password("Again: ")?);
        if first != again {
            return Err(Failure::Usage("the passwords differ".into()));
        }
        first
    };
    NewPasswordRule::for_account(config.min_password_length(), config.max_line(), email, phone)
        .check(password.expose())
        .map_err(Failure::Usage)?;
    Ok(password)
}

pub(super) fn user(config: &Configuration, command: &UserCommand) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match command {
        UserCommand::Add { email, phone, password_stdin } => {
            let mut store = open(config)?;
            if store.users()?.iter().any(|u| &u.email == email) {
                return Err(Failure::Other(format!("user {email} already exists")));
            }
            tokenizer_auth_effects::mail::recipient(email).map_err(|e| Failure::Usage(e.to_string()))?;
            let password = read_password(config, email, phone, *password_stdin)?;
            store.add_user(email, phone, &hasher()?.hash(&password)?)?;
            record(config, change("user_added", Some(email)))?;
            writeln!(out, "added {email}")?;
        }
        UserCommand::List => {
            for user in open(config)?.users()? {
                let note = if user.plaintext { "  (plaintext password: run `user rehash`)" } else { "" };
                writeln!(out, "{}\t{}\t{} sessions{note}", user.email, user.phone, user.sessions)?;
            }
        }
        UserCommand::Remove { email } => {
            if !open(config)?.remove_user(email)? {
                return Err(Failure::Other(format!("no user {email}")));
            }
            record(config, change("user_removed", Some(email)))?;
            writeln!(out, "removed {email}")?;
        }
        UserCommand::Passwd { email, password_stdin } => {
            let mut store = open(config)?;
            let Some(user) = store.users()?.into_iter().find(|u| &u.email == email) else {
                return Err(Failure::Other(format!("no user {email}")));
            };
            let password = read_password(config, email, &user.phone, *password_stdin)?;
            store.set_password(email, &hasher()?.hash(&password)?)?;
            let detail = Some("its sessions ended".to_owned());
            record(config, Change { detail, ..change("password_changed", Some(email)) })?;
            writeln!(out, "changed the password of {email}; its sessions have ended")?;
        }
        UserCommand::Rehash => {
            let hashed = open(config)?.rehash_plaintext(&hasher()?)?;
            let detail = Some(format!("{hashed} plaintext passwords hashed"));
            record(config, Change { detail, ..change("passwords_rehashed", None) })?;
            writeln!(out, "hashed {hashed} plaintext passwords")?;
        }
    }
    Ok(())
}

pub(super) fn session(config: &Configuration, command: &SessionCommand) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match command {
        SessionCommand::List { email } => {
            for s in open(config)?.sessions(email.as_deref())? {
                let started = s.started_at.format("%Y-%m-%d %H:%M:%S");
                let expires = s.expires_at.format("%Y-%m-%d %H:%M:%S");
                writeln!(out, "{}\t{}\tstarted {started}Z\texpires {expires}Z", s.email, s.mac)?;
            }
        }
        SessionCommand::Revoke { email, mac } => {
            let mac = match mac {
                Some(text) => Some(Mac::parse(text).ok_or_else(|| Failure::Usage(format!("invalid MAC {text:?}")))?),
                None => None,
            };
            let ended = open(config)?.revoke(email, mac)?;
            let detail = Some(format!("{ended} sessions ended"));
            record(config, Change { mac, detail, ..change("sessions_revoked", Some(email)) })?;
            writeln!(out, "ended {ended} sessions of {email}")?;
        }
    }
    Ok(())
}
