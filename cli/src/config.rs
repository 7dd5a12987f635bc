//! The configuration (`docs/CONFIGURATION.md`): embedded defaults, then a
//! TOML file (`--config`), then environment variables `TOKENIZER_AUTH_<KEY>`,
//! then flags; a later layer wins, key by key.
//!
//! Every key is read by one function (`Configuration::set`) whatever
//! layer it comes from, so a key means the same in each; an error names the
//! key and the layer it came from. Secrets (`smtp_password`, `server_key`) are held as
//! secrets and never printed.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::TimeDelta;
use tokenizer_auth_effects::audit::AuditTarget;
use tokenizer_auth_effects::mail::{DEFAULT_FROM, DEFAULT_TIMEOUT, MailConfig, Mailer, SmtpConfig, SmtpSecurity};
use tokenizer_auth_effects::settings::{MAX_LOOPS, MIN_CAPTURE_MAX_BYTES, Settings, Workers};
use tokenizer_auth_effects::store::StoreLocation;
use tokenizer_auth_effects::tls::TlsFiles;
use tokenizer_auth_engine::codec::proxy::Cidr;
use tokenizer_auth_engine::{Config, Secret, ServerKey};

use super::duration;

/// The prefix of the environment variables: `TOKENIZER_AUTH_TOKEN_TTL` sets
/// `token_ttl`.
pub const ENV_PREFIX: &str = "TOKENIZER_AUTH_";

/// The environment variable naming the configuration file (as `--config`).
pub const ENV_CONFIG: &str = "TOKENIZER_AUTH_CONFIG";

/// One key: how a value from any layer sets it and how `config show` prints
/// it, side by side so that neither can be added without the other.
struct Key {
    name: &'static str,
    set: fn(&mut Configuration, &Raw<'_>) -> Result<(), String>,
    show: fn(&Configuration) -> Shown,
}

/// The [`Key`] of a key held in one field: either `parse` makes the
/// field's value from `raw` and `show` prints a reference to it, or the
/// value is one of a few words (the `match` in `show` makes sure each value
/// has one).
macro_rules! key {
    ($name:literal, $($field:ident).+, |$raw:ident| $parse:expr, $show:expr) => {
        Key {
            name: $name,
            set: |c, $raw| {
                c.$($field).+ = $parse?;
                Ok(())
            },
            show: |c| $show(&c.$($field).+),
        }
    };
    ($name:literal, $($field:ident).+, [$($word:literal => $value:path),+]) => {
        Key {
            name: $name,
            set: |c, raw| {
                c.$($field).+ = match raw.text()? {
                    $($word => $value,)+
                    other => return Err(format!("{other:?}: expected {}", one_of(&[$($word),+]))),
                };
                Ok(())
            },
            show: |c| text(match c.$($field).+ { $($value => $word,)+ }),
        }
    };
}

/// Every key, in the order `config show` prints them.
const KEYS: &[Key] = &[
    key!(
        "data_dir",
        data_dir,
        |raw| match raw.text()? {
            "" => Err("empty path".to_owned()),
            dir => Ok(PathBuf::from(dir)),
        },
        path
    ),
    // Never echo the value: the URL may carry the database's password.
    Key {
        name: "store_url",
        set: |c, raw| {
            let text = raw.text().map_err(|_| "expected a string".to_owned())?.trim();
            c.store_url = match text {
                "" => None,
                url if url.starts_with("postgres://") || url.starts_with("postgresql://") => Some(url.to_owned()),
                _ => return Err("expected a postgres:// URL (or nothing, for the data folder's SQLite files)".into()),
            };
            Ok(())
        },
        show: |c| match &c.store_url {
            Some(url) => text(tokenizer_auth_effects::store::redact(url)),
            None => Shown::Unset(": the records are the SQLite files in data_dir"),
        },
    },
    Key {
        name: "store_ca",
        set: |c, raw| raw.text().map(|t| c.store_ca = optional_path(t)),
        show: |c| c.store_ca.as_deref().map_or(Shown::Unset(": the system's roots only"), path),
    },
    key!("store_connections", store_connections, |raw| raw.count(1), number),
    key!("revocation_delay", revocation_delay, |raw| raw.duration(), |d: &Duration| text(duration::format(*d))),
    key!("runtime", runtime, ["mio" => Runtime::Mio, "std" => Runtime::Std]),
    key!("listen", listen, |raw| address(raw.text()?), text),
    key!("legacy_passcode_listen", legacy_passcode_listen, |raw| address(raw.text()?), text),
    key!("legacy_login_listen", legacy_login_listen, |raw| address(raw.text()?), text),
    Key {
        name: "tls_cert",
        set: |c, raw| raw.text().map(|t| c.tls_cert = optional_path(t)),
        show: |c| c.tls_cert.as_deref().map_or(Shown::Unset(": the native listener speaks plaintext"), path),
    },
    Key {
        name: "tls_key",
        set: |c, raw| raw.text().map(|t| c.tls_key = optional_path(t)),
        show: |c| c.tls_key.as_deref().map_or(Shown::Unset(""), path),
    },
    Key {
        name: "admin_listen",
        set: |c, raw| {
            let text = raw.text()?;
            c.admin_listen = if text.is_empty() { None } else { Some(address(text)?) };
            Ok(())
        },
        show: |c| c.admin_listen.as_ref().map_or(Shown::Unset(": no admin listener"), text),
    },
    Key {
        name: "audit_log",
        set: |c, raw| raw.text().map(|t| c.audit_log = Some(t).filter(|t| !t.is_empty()).map(str::to_owned)),
        show: |c| c.audit_log.as_deref().map_or(Shown::Unset(": the audit trail is <data_dir>/audit.log"), text),
    },
    Key {
        name: "proxy_protocol_from",
        set: |c, raw| {
            let text = raw.text()?;
            let blocks = text.split([',', ' ']).filter(|t| !t.is_empty());
            c.engine.proxy_protocol_from = blocks
                .map(|t| Cidr::parse(t).ok_or_else(|| format!("{t:?}: expected an address or ADDRESS/PREFIX")))
                .collect::<Result<_, _>>()?;
            Ok(())
        },
        show: |c| match c.engine.proxy_protocol_from.as_slice() {
            [] => Shown::Unset(": no connection may carry a PROXY protocol header"),
            blocks => text(blocks.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
        },
    },
    key!("allow_plaintext", allow_plaintext, |raw| raw.boolean(), |b: &bool| Shown::Value(toml::Value::Boolean(*b))),
    Key {
        name: "capture",
        set: |c, raw| raw.text().map(|t| c.capture = Some(t).filter(|t| !t.is_empty()).map(PathBuf::from)),
        show: |c| c.capture.as_deref().map_or(Shown::Unset(": no capture is recorded"), path),
    },
    // At most i64::MAX, so that `config show` writes it as a TOML integer;
    // at least 4096, so never negative.
    key!("capture_max_bytes", capture_max_bytes, |raw| raw.count(MIN_CAPTURE_MAX_BYTES).map(i64::unsigned_abs), number),
    key!("passcode_ttl", engine.passcode.lifetime, |raw| raw.delta(false), delta),
    key!("token_ttl", engine.session.token_ttl, |raw| raw.delta(false), delta),
    key!("session_max_age", engine.session.max_age, |raw| raw.delta(true), delta),
    key!("renew_grace", engine.session.renew_grace, |raw| raw.delta(true), delta),
    key!("idle_timeout", engine.idle_timeout, |raw| raw.delta(false), delta),
    key!("partial_line_timeout", engine.partial_line_timeout, |raw| raw.delta(false), delta),
    key!("legacy_wait", engine.legacy_wait, |raw| raw.delta(true), delta),
    key!("max_line", engine.max_line, |raw| raw.count(1), number),
    key!("max_connections", engine.max_connections, |raw| raw.count(1), number),
    key!("max_pipeline", engine.max_pipeline, |raw| raw.count(1), number),
    key!("max_backlog", engine.max_backlog, |raw| raw.count(1), number),
    key!("write_timeout", engine.write_timeout, |raw| raw.delta(false), delta),
    key!("close_linger", engine.close_linger, |raw| raw.delta(true), delta),
    key!("shutdown_grace", engine.shutdown_grace, |raw| raw.delta(true), delta),
    key!("max_password_checks", engine.max_password_checks, |raw| raw.count(1), number),
    key!("passcode_requests_per_email", engine.limits.passcode_requests_per_email.max, |raw| raw.count(0), number),
    key!("passcode_requests_per_ip", engine.limits.passcode_requests_per_ip.max, |raw| raw.count(0), number),
    key!("failures_per_email", engine.limits.failures_per_email.max, |raw| raw.count(0), number),
    key!("failures_per_ip", engine.limits.failures_per_ip.max, |raw| raw.count(0), number),
    key!("max_consecutive_failures", engine.limits.max_consecutive_failures, |raw| raw.count(0), number),
    key!("lockout", engine.limits.lockout, |raw| raw.delta(true), delta),
    key!(
        "ipv6_limit_prefix",
        engine.limits.ipv6_prefix,
        |raw| match raw.count::<u8>(0)? {
            bits @ 0..=128 => Ok(bits),
            bits => Err(format!("{bits}: an IPv6 prefix is 0 to 128 bits")),
        },
        number
    ),
    key!(
        "loops",
        workers.loops,
        |raw| match raw.count::<usize>(1)? {
            loops @ 1..=MAX_LOOPS => Ok(loops),
            loops => Err(format!("{loops}: at most {MAX_LOOPS} event loops")),
        },
        number
    ),
    key!("store_workers", workers.store, |raw| raw.count(1), number),
    key!("hash_workers", workers.hash, |raw| raw.count(1), number),
    key!("mail_workers", workers.mail, |raw| raw.count(1), number),
    key!("session_cache", session_cache, |raw| raw.count(0), number),
    // Never echo the value: not even a wrong one says what it was.
    Key {
        name: "server_key",
        set: |c, raw| {
            let text = raw.text().map_err(|_| "expected a string".to_owned())?;
            c.server_key = match text.trim() {
                "" => None,
                hex => Some(ServerKey::from_hex(hex).ok_or_else(|| {
                    format!(
                        "expected 64 hex digits (32 bytes; e.g. from `od -An -tx1 data/server.key | tr -d ' \\n'`), \
                         got {} characters",
                        hex.chars().count()
                    )
                })?),
            };
            Ok(())
        },
        show: |c| secret(c.server_key.is_some(), ": the key is <data_dir>/server.key"),
    },
    key!("min_password_length", min_password_length, |raw| raw.count(1), number),
    key!("log_format", log_format, ["human" => LogFormat::Human, "json" => LogFormat::Json]),
    key!("log_level", log_level, |raw| log_level(raw.text()?), text),
    Key {
        name: "smtp_host",
        set: |c, raw| raw.text().map(|h| c.smtp.host = Some(h.trim()).filter(|h| !h.is_empty()).map(str::to_owned)),
        show: |c| c.smtp.host.as_deref().map_or(Shown::Unset(": mail goes to <data_dir>/outbox"), text),
    },
    Key {
        name: "smtp_port",
        set: |c, raw| raw.count(1).map(|port| c.smtp.port = Some(port)),
        show: |c| c.smtp.port.as_ref().map_or(Shown::Unset(": the default of smtp_security"), number),
    },
    key!(
        "smtp_security",
        smtp.security,
        ["tls" => SmtpSecurity::Tls, "starttls" => SmtpSecurity::StartTls, "plain" => SmtpSecurity::Plain]
    ),
    Key {
        name: "smtp_username",
        set: |c, raw| raw.text().map(|u| c.smtp.username = Some(u).filter(|u| !u.is_empty()).map(str::to_owned)),
        show: |c| c.smtp.username.as_deref().map_or(Shown::Unset(""), text),
    },
    // Never echo the value: not even a wrong type says what it was.
    Key {
        name: "smtp_password",
        set: |c, raw| {
            let password = raw.text().map_err(|_| "expected a string".to_owned())?;
            c.smtp.password = Some(Secret::new(password)).filter(|p| !p.is_empty());
            Ok(())
        },
        show: |c| secret(c.smtp.password.is_some(), ""),
    },
    key!("smtp_from", smtp.from, |raw| raw.text().map(str::to_owned), text),
    Key {
        name: "smtp_timeout",
        set: |c, raw| {
            let timeout = raw.duration()?;
            if timeout.is_zero() {
                return Err("must be more than 0".to_owned());
            }
            c.smtp.timeout = timeout;
            Ok(())
        },
        show: |c| text(duration::format(c.smtp.timeout)),
    },
];

/// The key of that name, if there is one.
fn lookup(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|key| key.name == name)
}

/// The log levels `log_level` takes by name.
const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Which runtime `serve` runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Runtime {
    /// The event loop on mio (the default).
    Mio,
    /// The threaded runtime.
    Std,
}

/// How log lines look on stderr.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LogFormat {
    /// One readable line per event (the default).
    Human,
    /// One JSON object per line.
    Json,
}

/// The SMTP keys, kept apart until the end because they make sense only
/// together.
#[derive(Clone, Debug)]
struct Smtp {
    host: Option<String>,
    port: Option<u16>,
    security: SmtpSecurity,
    username: Option<String>,
    password: Option<Secret>,
    from: String,
    timeout: Duration,
}

/// Where a value came from, to say so in an error.
enum Origin<'a> {
    File(&'a Path),
    Env(&'a str),
    Flag,
}

/// A value as a layer gives it: typed from TOML, text from the environment
/// or a flag.
enum Raw<'a> {
    Toml(&'a toml::Value),
    Text(&'a str),
}

/// The effective configuration.
#[derive(Clone, Debug)]
pub struct Configuration {
    data_dir: PathBuf,
    store_url: Option<String>,
    store_ca: Option<PathBuf>,
    store_connections: u32,
    revocation_delay: Duration,
    runtime: Runtime,
    listen: SocketAddr,
    legacy_passcode_listen: SocketAddr,
    legacy_login_listen: SocketAddr,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    admin_listen: Option<SocketAddr>,
    audit_log: Option<String>,
    allow_plaintext: bool,
    capture: Option<PathBuf>,
    capture_max_bytes: u64,
    engine: Config,
    workers: Workers,
    session_cache: usize,
    server_key: Option<ServerKey>,
    min_password_length: usize,
    log_format: LogFormat,
    log_level: String,
    smtp: Smtp,
    warnings: Vec<String>,
    /// The SMTP keys do not make a whole (see [`Configuration::check_mail`]).
    mail_problem: Option<&'static str>,
}

impl Default for Configuration {
    /// The embedded defaults.
    fn default() -> Self {
        let settings = Settings::default();
        Configuration {
            data_dir: settings.data_dir,
            store_url: None,
            store_ca: None,
            store_connections: settings.store_connections,
            revocation_delay: settings.revocation_delay,
            runtime: Runtime::Mio,
            listen: settings.listen,
            legacy_passcode_listen: settings.legacy_passcode_listen,
            legacy_login_listen: settings.legacy_login_listen,
            tls_cert: None,
            tls_key: None,
            admin_listen: None,
            audit_log: None,
            allow_plaintext: settings.allow_plaintext,
            capture: None,
            capture_max_bytes: settings.capture_max_bytes,
            engine: settings.engine,
            workers: settings.workers,
            session_cache: settings.session_cache,
            server_key: None,
            min_password_length: tokenizer_auth_engine::DEFAULT_MIN_PASSWORD_LENGTH,
            log_format: LogFormat::Human,
            log_level: "info".to_owned(),
            smtp: Smtp {
                host: None,
                port: None,
                security: SmtpSecurity::StartTls,
                username: None,
                password: None,
                from: DEFAULT_FROM.to_owned(),
                timeout: DEFAULT_TIMEOUT,
            },
            warnings: Vec::new(),
            mail_problem: None,
        }
    }
}

impl Configuration {
    /// Loads the layers over the defaults: the TOML file `file`, then the
    /// `TOKENIZER_AUTH_*` variables among `env`, then `flags` (key, value as
    /// written). The error is one line naming the key and where it came
    /// from; every error here is a configuration error (exit 2).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (OsString, OsString)>,
        flags: &[(&str, String)],
    ) -> Result<Configuration, String> {
        let mut config = Configuration::default();
        if let Some(path) = file {
            config.load_file(path)?;
        }
        config.load_env(env)?;
        for (key, value) in flags {
            config.set(key, &Raw::Text(value), &Origin::Flag)?;
        }
        config.finish()?;
        Ok(config)
    }

    fn load_file(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the configuration file {}: {e}", path.display()))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            let line = e.span().map_or(String::new(), |span| {
                format!(" at line {}", text[..span.start.min(text.len())].matches('\n').count() + 1)
            });
            let message = e.message().trim().replace('\n', "; ");
            format!("{}: invalid TOML{line}: {message}", path.display())
        })?;
        // Keys in the file's order would be nicer, but a Table is sorted;
        // the first unknown key alphabetically is as good a report.
        for (key, value) in &table {
            if lookup(key).is_none() {
                let hint = suggestion(key).map_or(String::new(), |k| format!(" (did you mean `{k}`?)"));
                return Err(format!("unknown key `{key}` in {}{hint}", path.display()));
            }
            self.set(key, &Raw::Toml(value), &Origin::File(path))?;
        }
        if table.contains_key("smtp_password") && readable_by_others(path) {
            self.warnings.push(format!(
                "{} holds smtp_password and others can read it: make it readable only by the service account \
                 (chmod 600), or pass the password in TOKENIZER_AUTH_SMTP_PASSWORD",
                path.display()
            ));
        }
        Ok(())
    }

    fn load_env(&mut self, env: impl IntoIterator<Item = (OsString, OsString)>) -> Result<(), String> {
        let mut found: HashMap<String, OsString> = HashMap::new();
        for (name, value) in env {
            let Some(name) = name.to_str() else { continue };
            let Some(key) = name.strip_prefix(ENV_PREFIX) else { continue };
            let key = key.to_ascii_lowercase();
            if lookup(&key).is_some() && name == env_var(&key) {
                found.insert(key, value);
            } else if name != ENV_CONFIG {
                let hint = suggestion(&key).map_or(String::new(), |k| format!(" (did you mean {}?)", env_var(k)));
                self.warnings.push(format!("ignoring the environment variable {name}: no such key{hint}"));
            }
        }
        for key in KEYS.iter().map(|key| key.name) {
            if let Some(value) = found.get(key) {
                let var = env_var(key);
                let text =
                    value.to_str().ok_or_else(|| format!("invalid {key} (environment variable {var}): not UTF-8"))?;
                self.set(key, &Raw::Text(text), &Origin::Env(&var))?;
            }
        }
        Ok(())
    }

    /// Sets one key, or says why not.
    fn set(&mut self, name: &str, raw: &Raw<'_>, origin: &Origin<'_>) -> Result<(), String> {
        let result = match lookup(name) {
            Some(key) => (key.set)(self, raw),
            None => Err("no such key".to_owned()),
        };
        result.map_err(|reason| {
            let at = match origin {
                Origin::File(path) => format!("in {}", path.display()),
                Origin::Env(var) => format!("(environment variable {var})"),
                Origin::Flag => format!("(flag --{})", name.replace('_', "-")),
            };
            format!("invalid {name} {at}: {reason}")
        })
    }

    /// Checks what only the keys together can say.
    fn finish(&mut self) -> Result<(), String> {
        let mut listeners = vec![
            ("listen", self.listen),
            ("legacy_passcode_listen", self.legacy_passcode_listen),
            ("legacy_login_listen", self.legacy_login_listen),
        ];
        listeners.extend(self.admin_listen.map(|a| ("admin_listen", a)));
        for (i, (a, addr)) in listeners.iter().enumerate() {
            for (b, other) in &listeners[i + 1..] {
                if addr.port() != 0 && addr == other {
                    return Err(format!("{a} and {b} are both {addr}: each listener needs its own address"));
                }
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err("tls_cert is set but tls_key is not".to_owned()),
            (None, Some(_)) => return Err("tls_key is set but tls_cert is not".to_owned()),
            _ => {}
        }
        let smtp = &self.smtp;
        // Only what sends mail needs both (`check_mail`): an admin command
        // run without the service's secrets still works.
        self.mail_problem = match (&smtp.username, &smtp.password) {
            (Some(_), None) => Some("smtp_username is set but smtp_password is not"),
            (None, Some(_)) => Some("smtp_password is set but smtp_username is not"),
            _ => None,
        };
        if let MailConfig::Smtp(relay) = self.mail() {
            Mailer::new(&MailConfig::Smtp(relay)).map_err(|e| format!("invalid SMTP relay settings: {e}"))?;
            if smtp.security == SmtpSecurity::Plain && smtp.password.is_some() {
                self.warnings.push(
                    "smtp_security = \"plain\" sends smtp_password to the relay unencrypted; use \"starttls\" or \
                     \"tls\" unless the relay is on this machine"
                        .to_owned(),
                );
            }
        } else if smtp.username.is_some() {
            self.warnings.push("smtp_username is set but smtp_host is not: mail goes to the outbox".to_owned());
        }
        Ok(())
    }

    /// Whether mail can be sent as configured: the SMTP username and
    /// password are given together. `serve` and `config show` ask; the
    /// admin commands, which send no mail, do not, so that they run
    /// without the service's secrets.
    pub fn check_mail(&self) -> Result<(), String> {
        self.mail_problem.map_or(Ok(()), |problem| Err(problem.to_owned()))
    }

    /// Warnings found while loading (ignored variables, a config file
    /// others can read that holds the SMTP password); to be logged once
    /// logging is set up.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The data folder.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server key given by `server_key`, if it was.
    pub fn server_key(&self) -> Option<&ServerKey> {
        self.server_key.as_ref()
    }

    /// The shortest password `user add` and `user passwd` take, in
    /// characters.
    pub fn min_password_length(&self) -> usize {
        self.min_password_length
    }

    /// The longest native line (a new password must fit in a request).
    pub fn max_line(&self) -> usize {
        self.engine.max_line
    }

    /// The native listener's address.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The runtime `serve` runs.
    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// The log format.
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }

    /// The log filter: a level, or `tracing` directives.
    pub fn log_level(&self) -> &str {
        &self.log_level
    }

    /// Where mail goes: the relay, or `<data_dir>/outbox`.
    pub fn mail(&self) -> MailConfig {
        let smtp = &self.smtp;
        match &smtp.host {
            None => MailConfig::Outbox { dir: self.data_dir.join("outbox") },
            Some(host) => MailConfig::Smtp(SmtpConfig {
                host: host.clone(),
                port: smtp.port.unwrap_or_else(|| smtp.security.default_port()),
                security: smtp.security,
                credentials: smtp.username.clone().zip(smtp.password.clone()),
                from: smtp.from.clone(),
                timeout: smtp.timeout,
            }),
        }
    }

    /// Where the records are: `store_url`, or the data folder's files.
    pub fn store(&self) -> StoreLocation {
        self.settings().store()
    }

    /// Where the audit trail goes: `audit_log`, or `<data_dir>/audit.log`.
    pub fn audit_log(&self) -> AuditTarget {
        self.audit_log.as_deref().map_or_else(|| AuditTarget::in_data_dir(&self.data_dir), AuditTarget::parse)
    }

    /// The native listener's certificate and key files, if TLS is on.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles { cert: self.tls_cert.clone()?, key: self.tls_key.clone()? })
    }

    /// What a server runs with (TLS not loaded yet: see [`Self::tls_files`]).
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::new(self.data_dir.clone());
        settings.engine = self.engine.clone();
        settings.mail = self.mail();
        settings.listen = self.listen;
        settings.legacy_passcode_listen = self.legacy_passcode_listen;
        settings.legacy_login_listen = self.legacy_login_listen;
        settings.allow_plaintext = self.allow_plaintext;
        settings.admin_listen = self.admin_listen;
        settings.audit_log = self.audit_log();
        settings.store_url = self.store_url.clone();
        settings.store_ca = self.store_ca.clone();
        settings.store_connections = self.store_connections;
        settings.revocation_delay = self.revocation_delay;
        settings.workers = self.workers;
        settings.session_cache = self.session_cache;
        settings.server_key = self.server_key.clone();
        settings.capture = self.capture.clone();
        settings.capture_max_bytes = self.capture_max_bytes;
        settings
    }

    /// The effective configuration as a TOML file that loads back to the
    /// same configuration, except that the SMTP password is never shown.
    pub fn show(&self) -> String {
        let mut out = String::from(
            "# The effective configuration of tokenizer-auth: embedded defaults, then the\n\
             # configuration file, then TOKENIZER_AUTH_* variables, then flags.\n",
        );
        for key in KEYS {
            let name = key.name;
            // Writing to a String cannot fail.
            let _ = match (key.show)(self) {
                Shown::Value(value) => writeln!(out, "{name} = {value}"),
                Shown::Unset(note) => writeln!(out, "# {name} is not set{note}"),
                Shown::Secret => writeln!(out, "# {name} is set (not shown)"),
            };
        }
        out
    }
}

/// How `config show` prints one key.
#[derive(PartialEq, Debug)]
enum Shown {
    Value(toml::Value),
    Unset(&'static str),
    Secret,
}

/// A path, or none for the empty string.
fn optional_path(text: &str) -> Option<PathBuf> {
    Some(text).filter(|t| !t.is_empty()).map(PathBuf::from)
}

fn text(value: impl std::fmt::Display) -> Shown {
    Shown::Value(toml::Value::String(value.to_string()))
}

fn path(p: &Path) -> Shown {
    text(p.to_string_lossy())
}

fn delta(d: &TimeDelta) -> Shown {
    text(duration::format(d.to_std().unwrap_or_default()))
}

fn number<T: Copy + TryInto<i64>>(n: &T) -> Shown {
    Shown::Value(toml::Value::Integer((*n).try_into().unwrap_or(i64::MAX)))
}

fn secret(set: bool, unset_note: &'static str) -> Shown {
    if set { Shown::Secret } else { Shown::Unset(unset_note) }
}

impl Raw<'_> {
    /// `true` or `false` (a TOML boolean, or those words).
    fn boolean(&self) -> Result<bool, String> {
        if let Raw::Toml(toml::Value::Boolean(b)) = self {
            return Ok(*b);
        }
        match self.text().map_err(|_| "expected true or false".to_owned())? {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(format!("{other:?}: expected true or false")),
        }
    }

    fn text(&self) -> Result<&str, String> {
        match self {
            Raw::Text(text) => Ok(text),
            Raw::Toml(toml::Value::String(text)) => Ok(text),
            Raw::Toml(other) => Err(format!("expected a string, found {}", other.type_str())),
        }
    }

    fn duration(&self) -> Result<Duration, String> {
        match self {
            Raw::Text(text) => duration::parse(text),
            Raw::Toml(toml::Value::String(text)) => duration::parse(text),
            Raw::Toml(toml::Value::Integer(0)) => Ok(Duration::ZERO),
            Raw::Toml(toml::Value::Integer(n)) => {
                Err(format!("{n} has no unit: write a string with a unit, e.g. \"{n}s\""))
            }
            Raw::Toml(other) => Err(format!("expected a duration such as \"180s\", found {}", other.type_str())),
        }
    }

    /// A duration for the engine; zero allowed only where it means
    /// something (unlimited, off, no wait).
    fn delta(&self, zero_allowed: bool) -> Result<TimeDelta, String> {
        let duration = self.duration()?;
        if duration.is_zero() && !zero_allowed {
            return Err("must be more than 0".to_owned());
        }
        // `duration::MAX` keeps this far inside TimeDelta's range.
        TimeDelta::from_std(duration).map_err(|_| "too long".to_owned())
    }

    /// A whole number of at least `min` that fits `T`.
    fn count<T: TryFrom<u64>>(&self, min: u64) -> Result<T, String> {
        let n = match self {
            Raw::Toml(toml::Value::Integer(n)) => {
                u64::try_from(*n).map_err(|_| format!("{n} is negative: expected a whole number"))?
            }
            Raw::Toml(other) => return Err(format!("expected a whole number, found {}", other.type_str())),
            Raw::Text(text) => {
                if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("{text:?} is not a whole number"));
                }
                text.parse().map_err(|_| format!("{text} is too large"))?
            }
        };
        if n < min {
            return Err(format!("must be at least {min}"));
        }
        T::try_from(n).map_err(|_| format!("{n} is too large"))
    }
}

/// `HOST:PORT`: an IP address and port, or a host name that resolves
/// (IPv4 preferred, so `localhost` means 127.0.0.1).
pub(crate) fn address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let expected = "expected HOST:PORT, e.g. 127.0.0.1:7160 or [::1]:7160 (port 0 = any free port)";
    if !text.contains(':') {
        return Err(format!("{text:?}: {expected}"));
    }
    let addrs: Vec<SocketAddr> = text.to_socket_addrs().map_err(|e| format!("{text:?}: {expected} ({e})"))?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?}: the host has no address"))
}

/// A `tracing` filter: a level by name, or directives such as
/// `info,tokenizer_auth_engine=debug`. A bare word that is no level is
/// refused (tracing would read it as a module name and log everything in it).
fn log_level(text: &str) -> Result<String, String> {
    let expected = "expected error, warn, info, debug, trace or off, or directives like \
                    \"info,tokenizer_auth_runtime_mio=debug\"";
    let lower = text.trim().to_ascii_lowercase();
    if lower.is_empty() {
        return Err(format!("empty: {expected}"));
    }
    for directive in lower.split(',') {
        if !directive.contains('=') && !LEVELS.contains(&directive.trim()) {
            return Err(format!("{text:?}: {expected}"));
        }
    }
    tracing_subscriber::EnvFilter::try_new(&lower).map_err(|e| format!("{text:?}: {e}; {expected}"))?;
    Ok(lower)
}

/// `"a", "b" or "c"`.
fn one_of(words: &[&str]) -> String {
    let mut list = String::new();
    for (i, word) in words.iter().enumerate() {
        let separator = if i == 0 {
            ""
        } else if i + 1 == words.len() {
            " or "
        } else {
            ", "
        };
        // Writing to a String cannot fail.
        let _ = write!(list, "{separator}{word:?}");
    }
    list
}

/// `TOKENIZER_AUTH_<KEY>`.
pub fn env_var(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

/// The known key closest to a misspelt one, if any is close.
fn suggestion(key: &str) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    KEYS.iter().map(|k| (edit_distance(&key, k.name), k.name)).filter(|(d, _)| *d <= 2).min().map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(unix)]
fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

#[cfg(not(unix))]
fn readable_by_others(_: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect()
    }

    fn with_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer-auth.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn defaults_are_the_embedded_ones() {
        let config = Configuration::load(None, env(&[]), &[]).unwrap();
        let settings = config.settings();
        assert_eq!(settings.data_dir, PathBuf::from("data"));
        assert_eq!(settings.listen.to_string(), "127.0.0.1:7160");
        assert_eq!(settings.legacy_passcode_listen.to_string(), "127.0.0.1:7158");
        assert_eq!(settings.legacy_login_listen.to_string(), "127.0.0.1:7159");
        assert_eq!(settings.engine, Config::default());
        assert_eq!(settings.capture_max_bytes, 1 << 30);
        assert_eq!(settings.mail, MailConfig::Outbox { dir: PathBuf::from("data/outbox") });
        assert_eq!(config.runtime(), Runtime::Mio);
        assert_eq!(config.log_format(), LogFormat::Human);
        assert_eq!(config.log_level(), "info");
        assert!(config.warnings().is_empty());
    }

    #[test]
    fn every_key_is_shown_and_loads_back() {
        let (_dir, path) = with_file(
            r#"
            data_dir = "/srv/auth"
            runtime = "std"
            listen = "0.0.0.0:7160"
            legacy_passcode_listen = "127.0.0.1:0"
            legacy_login_listen = "127.0.0.1:0"
            capture = "/tmp/capture"
            capture_max_bytes = 1048576
            passcode_ttl = "5m"
            token_ttl = "2h"
            session_max_age = 0
            idle_timeout = "90s"
            partial_line_timeout = "5s"
            legacy_wait = "250ms"
            max_line = 8192
            max_connections = 500
            max_pipeline = 16
            max_password_checks = 8
            passcode_requests_per_email = 3
            passcode_requests_per_ip = 30
            failures_per_email = 10
            failures_per_ip = 0
            max_consecutive_failures = 0
            lockout = "30m"
            store_workers = 2
            hash_workers = 3
            mail_workers = 5
            session_cache = 1000
            server_key = "5ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2e75ec2"
            min_password_length = 10
            log_format = "json"
            log_level = "debug"
            smtp_host = "smtp.example.com"
            smtp_port = 2525
            smtp_security = "tls"
            smtp_username = "auth"
            smtp_password = "hunter2"
            smtp_from = "Auth <auth@example.com>"
            smtp_timeout = "20s"
            "#,
        );
        let config = Configuration::load(Some(&path), env(&[]), &[]).unwrap();
        let shown = config.show();
        for key in KEYS.iter().map(|key| key.name) {
            assert!(shown.contains(&format!("\n{key} = ")) || shown.contains(&format!("# {key} ")), "{key}: {shown}");
        }
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!shown.contains("5ec2e7") && shown.contains("# server_key is set (not shown)"), "{shown}");
        assert!(!format!("{config:?}").contains("5ec2e7"));
        assert!(!format!("{:?}", config.settings()).contains("5ec2e7"));
        assert_eq!(config.settings().server_key, ServerKey::from_hex(&"5ec2e7".repeat(11)[..64]));
        assert_eq!(config.min_password_length(), 10);
        let engine = &config.settings().engine;
        assert_eq!(engine.session.max_age, TimeDelta::zero());
        assert_eq!(engine.legacy_wait, TimeDelta::milliseconds(250));
        assert_eq!(engine.limits.max_consecutive_failures, 0);
        assert_eq!(engine.limits.failures_per_email.period, TimeDelta::minutes(15));
        assert_eq!(config.settings().capture_max_bytes, 1 << 20);
        let MailConfig::Smtp(relay) = config.mail() else { panic!("no relay") };
        assert_eq!((relay.port, relay.security), (2525, SmtpSecurity::Tls));
        assert_eq!(relay.credentials.as_ref().map(|(u, p)| (u.as_str(), p.expose())), Some(("auth", "hunter2")));

        // The shown text loads back to the same configuration (but the
        // password, which it does not show).
        let (_dir2, again) = with_file(&shown);
        let reloaded = Configuration::load(
            Some(&again),
            env(&[("TOKENIZER_AUTH_SMTP_PASSWORD", "x"), ("TOKENIZER_AUTH_SERVER_KEY", &"5ec2e7".repeat(11)[..64])]),
            &[],
        )
        .unwrap();
        assert_eq!(reloaded.show(), shown);
        assert_eq!(reloaded.settings().engine, config.settings().engine);
    }

    #[test]
    fn every_key_is_documented_with_its_default() {
        // A row is "| `key` | default | meaning |". A default in backticks
        // must load to the real one; one in words is for a key not set by
        // default, or for loops and hash_workers, which the machine decides.
        let docs = include_str!("../../docs/CONFIGURATION.md");
        let rows: Vec<(&str, &str)> =
            docs.lines().filter_map(|line| line.strip_prefix("| `")?.split_once("` | ")).collect();
        assert_eq!(rows.len(), KEYS.len(), "docs/CONFIGURATION.md should list each key once and nothing else");
        let defaults = Configuration::default();
        for key in KEYS {
            let name = key.name;
            let Some((_, cell)) = rows.iter().find(|(row, _)| *row == name) else {
                panic!("{name} is not in docs/CONFIGURATION.md")
            };
            let real = (key.show)(&defaults);
            if let Some((value, _)) = cell.strip_prefix('`').and_then(|rest| rest.split_once('`')) {
                let mut documented = Configuration::default();
                (key.set)(&mut documented, &Raw::Text(value)).unwrap_or_else(|e| panic!("{name} = {value:?}: {e}"));
                assert_eq!((key.show)(&documented), real, "{name}: the docs say {value}");
            } else {
                assert!(
                    matches!(real, Shown::Unset(_)) || ["loops", "hash_workers"].contains(&name),
                    "{name}: the docs give no default"
                );
            }
        }
    }

    #[test]
    fn later_layers_win() {
        let (_dir, path) = with_file("token_ttl = \"1m\"\npasscode_ttl = \"2m\"\nlisten = \"127.0.0.1:1\"\n");
        let config = Configuration::load(
            Some(&path),
            env(&[("TOKENIZER_AUTH_TOKEN_TTL", "2s"), ("TOKENIZER_AUTH_LISTEN", "127.0.0.1:2")]),
            &[("listen", "127.0.0.1:3".to_owned())],
        )
        .unwrap();
        let engine = &config.settings().engine;
        assert_eq!(engine.passcode.lifetime, TimeDelta::minutes(2));
        assert_eq!(engine.session.token_ttl, TimeDelta::seconds(2));
        assert_eq!(config.listen().to_string(), "127.0.0.1:3");
    }

    #[test]
    fn errors_name_the_key_and_where_it_came_from() {
        let (_dir, path) = with_file("token_ttl = \"5 minutes\"\n");
        let error = Configuration::load(Some(&path), env(&[]), &[]).unwrap_err();
        assert!(error.starts_with("invalid token_ttl in ") && error.contains("unknown unit"), "{error}");

        let error = Configuration::load(None, env(&[("TOKENIZER_AUTH_PASSCODE_TTL", "3x")]), &[]).unwrap_err();
        assert!(
            error.starts_with("invalid passcode_ttl (environment variable TOKENIZER_AUTH_PASSCODE_TTL)"),
            "{error}"
        );

        let error = Configuration::load(None, env(&[]), &[("listen", "nowhere".to_owned())]).unwrap_err();
        assert!(error.starts_with("invalid listen (flag --listen)"), "{error}");

        // Effects' ids tell at most 256 loops apart (runtime-mio).
        let loops = |n: &str| Configuration::load(None, env(&[("TOKENIZER_AUTH_LOOPS", n)]), &[]);
        assert_eq!(loops("256").unwrap().settings().workers.loops, 256);
        let error = loops("257").unwrap_err();
        assert!(error.starts_with("invalid loops") && error.contains("at most 256"), "{error}");

        let (_dir, path) = with_file("tokne_ttl = \"5m\"\n");
        let error = Configuration::load(Some(&path), env(&[]), &[]).unwrap_err();
        assert!(error.starts_with("unknown key `tokne_ttl` in ") && error.ends_with("(did you mean `token_ttl`?)"));

        let (_dir, path) = with_file("[smtp]\nhost = \"x\"\n");
        let error = Configuration::load(Some(&path), env(&[]), &[]).unwrap_err();
        assert!(error.starts_with("unknown key `smtp` in "), "{error}");

        let (_dir, path) = with_file("token_ttl = \n");
        let error = Configuration::load(Some(&path), env(&[]), &[]).unwrap_err();
        assert!(error.contains("invalid TOML at line 1") && !error.contains('\n'), "{error}");

        for (key, value, says) in [
            ("max_line", "0", "at least 1"),
            ("max_line", "-1", "not a whole number"),
            ("max_line", "4k", "not a whole number"),
            ("capture_max_bytes", "4095", "at least 4096"),
            ("capture_max_bytes", "9223372036854775808", "too large"),
            ("token_ttl", "0", "more than 0"),
            ("smtp_port", "70000", "too large"),
            ("runtime", "tokio", "expected \"mio\" or \"std\""),
            ("log_format", "xml", "expected \"human\" or \"json\""),
            ("log_level", "verbose", "expected error, warn"),
            ("smtp_security", "ssl", "expected \"tls\""),
            ("listen", "7160", "expected HOST:PORT"),
        ] {
            let error = Configuration::load(None, env(&[(&env_var(key), value)]), &[]).unwrap_err();
            assert!(error.starts_with(&format!("invalid {key} ")) && error.contains(says), "{key}={value}: {error}");
        }

        let (_dir, path) = with_file("max_line = \"4096\"\n");
        let error = Configuration::load(Some(&path), env(&[]), &[]).unwrap_err();
        assert!(error.contains("expected a whole number, found string"), "{error}");
        let (_dir, path) = with_file("token_ttl = 60\n");
        let error = Configuration::load(Some(&path), env(&[]), &[]).unwrap_err();
        assert!(error.contains("60 has no unit"), "{error}");
    }

    #[test]
    fn smtp_settings_make_sense_together() {
        let relay = |vars: &[(&str, &str)]| Configuration::load(None, env(vars), &[]);
        let config = relay(&[("TOKENIZER_AUTH_SMTP_HOST", "smtp.example.com")]).unwrap();
        let MailConfig::Smtp(smtp) = config.mail() else { panic!() };
        assert_eq!((smtp.port, smtp.security, smtp.credentials.is_none()), (587, SmtpSecurity::StartTls, true));
        let config =
            relay(&[("TOKENIZER_AUTH_SMTP_HOST", "smtp.example.com"), ("TOKENIZER_AUTH_SMTP_SECURITY", "tls")])
                .unwrap();
        let MailConfig::Smtp(smtp) = config.mail() else { panic!() };
        assert_eq!(smtp.port, 465);

        let half = relay(&[("TOKENIZER_AUTH_SMTP_HOST", "h"), ("TOKENIZER_AUTH_SMTP_USERNAME", "u")]).unwrap();
        let error = half.check_mail().unwrap_err();
        assert!(error.contains("smtp_password is not"), "{error}");
        let error = relay(&[("TOKENIZER_AUTH_SMTP_HOST", "h"), ("TOKENIZER_AUTH_SMTP_FROM", "nobody")]).unwrap_err();
        assert!(error.contains("invalid SMTP relay settings"), "{error}");

        let config = relay(&[
            ("TOKENIZER_AUTH_SMTP_HOST", "localhost"),
            ("TOKENIZER_AUTH_SMTP_SECURITY", "plain"),
            ("TOKENIZER_AUTH_SMTP_USERNAME", "u"),
            ("TOKENIZER_AUTH_SMTP_PASSWORD", "p4ss"),
        ])
        .unwrap();
        assert!(config.warnings().iter().any(|w| w.contains("unencrypted")));
        assert!(!config.warnings().iter().any(|w| w.contains("p4ss")));

        // An empty host means the outbox, so the environment can undo a file.
        let config = relay(&[("TOKENIZER_AUTH_SMTP_HOST", "")]).unwrap();
        assert!(matches!(config.mail(), MailConfig::Outbox { .. }));
    }

    #[test]
    fn bad_passwords_are_not_echoed() {
        let (_dir, path) = with_file("smtp_password = 12345678\n");
        let error = Configuration::load(Some(&path), env(&[]), &[]).unwrap_err();
        assert!(!error.contains("12345678"), "{error}");
    }

    #[test]
    fn the_server_key_is_64_hex_digits_and_never_echoed() {
        let key = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let config = Configuration::load(None, env(&[("TOKENIZER_AUTH_SERVER_KEY", key)]), &[]).unwrap();
        assert_eq!(config.server_key(), ServerKey::from_hex(key).as_ref());
        assert_eq!(Configuration::load(None, env(&[]), &[]).unwrap().server_key(), None, "the data folder's");
        for bad in [&key[..62], "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeZZ"] {
            let error = Configuration::load(None, env(&[("TOKENIZER_AUTH_SERVER_KEY", bad)]), &[]).unwrap_err();
            assert!(error.starts_with("invalid server_key (environment variable TOKENIZER_AUTH_SERVER_KEY)"));
            assert!(error.contains("64 hex digits") && !error.contains("00112233"), "{error}");
        }
        let (_dir, path) = with_file("server_key = 1234\n");
        let error = Configuration::load(Some(&path), env(&[]), &[]).unwrap_err();
        assert!(error.contains("expected a string") && !error.contains("1234"), "{error}");
        let error = Configuration::load(None, env(&[("TOKENIZER_AUTH_MIN_PASSWORD_LENGTH", "0")]), &[]).unwrap_err();
        assert!(error.contains("at least 1"), "{error}");
    }

    #[test]
    fn unknown_variables_are_warned_about() {
        let config = Configuration::load(
            None,
            env(&[("TOKENIZER_AUTH_TOKEN_TTTL", "2s"), ("TOKENIZER_AUTH_CONFIG", "x"), ("HOME", "/root")]),
            &[],
        )
        .unwrap();
        assert_eq!(
            config.warnings(),
            ["ignoring the environment variable TOKENIZER_AUTH_TOKEN_TTTL: no such key (did you mean \
              TOKENIZER_AUTH_TOKEN_TTL?)"]
        );
    }

    #[test]
    fn duplicate_listeners_are_refused() {
        let error =
            Configuration::load(None, env(&[]), &[("legacy_login_listen", "127.0.0.1:7160".to_owned())]).unwrap_err();
        assert!(error.contains("listen and legacy_login_listen are both 127.0.0.1:7160"), "{error}");
        Configuration::load(
            None,
            env(&[]),
            &[("listen", "127.0.0.1:0".to_owned()), ("legacy_login_listen", "127.0.0.1:0".to_owned())],
        )
        .unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_password_in_a_file_others_can_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, path) = with_file("smtp_host = \"h\"\nsmtp_username = \"u\"\nsmtp_password = \"secret99\"\n");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = Configuration::load(Some(&path), env(&[]), &[]).unwrap();
        assert!(config.warnings().iter().any(|w| w.contains("chmod 600")), "{:?}", config.warnings());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = Configuration::load(Some(&path), env(&[]), &[]).unwrap();
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    }
}
