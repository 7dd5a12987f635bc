//! The command line (`docs/CONFIGURATION.md`, "Commands"). Its spellings are
//! part of the contract: scripts and tests drive it. The configuration keys
//! and their layers are in `docs/CONFIGURATION.md`.

mod admin;
mod backup;
mod client;
pub mod config;
mod duration;
mod limits;
pub mod logging;
mod replay;
mod serve;
mod store_copy;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use self::config::Configuration;

/// Why a command failed, and so its exit code: 2 for usage or
/// configuration, 1 for anything else.
#[derive(Debug)]
pub enum Failure {
    /// Bad usage or configuration (exit 2).
    Usage(String),
    /// Anything else (exit 1).
    Other(String),
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Other(e.to_string())
    }
}

/// A device-bound, email-MFA token authentication server.
#[derive(Parser, Debug)]
#[command(
    name = "tokenizer-auth",
    version,
    about = "An authentication server for devices: email, password and a one-time passcode sent by mail, then a \
             session token bound to the device's MAC address and IP, renewed by rotation. Speaks its native line \
             protocol (TLS optional) and the old Python server's, on its files.",
    long_about = "An authentication server for devices: email, password and a one-time passcode sent by mail, then \
                  a session token bound to the device's MAC address and IP, renewed by rotation. Speaks its native \
                  line protocol (TLS optional) and the old Python server's, on its files.\n\n\
                  Start: `tokenizer-auth user add EMAIL --phone PHONE` makes an account, `tokenizer-auth serve` \
                  serves it on 127.0.0.1:7160 (data and mail outbox in ./data), and `tokenizer-auth client` \
                  talks to it.",
    after_help = "Configuration: embedded defaults, then --config FILE (TOML), then TOKENIZER_AUTH_<KEY> \
                  environment variables, then flags; later wins. `tokenizer-auth config show` prints the \
                  result. Every key is in docs/CONFIGURATION.md."
)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, value_name = "FILE", env = config::ENV_CONFIG)]
    pub config: Option<PathBuf>,
    /// Data folder holding op_creds.db, op_passcodes.db and outbox/
    /// [default: data; key data_dir].
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Inspect or clear the brute-force counters of an email or a client.
    #[command(subcommand)]
    Limits(LimitsCommand),
    /// Copy the data folder's two databases (and its server key) into one
    /// archive, FILE, while servers run: a tar file, mode 0600, restored
    /// into an empty folder with `tar -xf FILE -C DIR` (docs/OPERATIONS.md).
    /// Run it as the service's user.
    Backup {
        /// The archive to write; it must not exist.
        file: PathBuf,
    },
    /// Move the records between stores.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Talk to a server in the native protocol.
    Client(ClientArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Replay a capture (`serve --capture FILE`) through a fresh engine and
    /// check every output against the recording. Needs the recording
    /// server's key: its data folder (--data-dir) or server_key.
    Replay {
        /// The capture file.
        file: PathBuf,
    },
}

/// The flags of `serve` (and `config show`), each the last word on its
/// configuration key.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// The runtime [default: mio; key runtime].
    #[arg(long, value_name = "RUNTIME", value_parser = ["mio", "std"])]
    pub runtime: Option<String>,
    /// The native listener, HOST:PORT (port 0 = any free port)
    /// [default: 127.0.0.1:7160; key listen].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The legacy passcode listener [default: 127.0.0.1:7158; key
    /// legacy_passcode_listen].
    #[arg(long, value_name = "ADDR")]
    pub legacy_passcode_listen: Option<String>,
    /// The legacy login listener [default: 127.0.0.1:7159; key
    /// legacy_login_listen].
    #[arg(long, value_name = "ADDR")]
    pub legacy_login_listen: Option<String>,
    /// Record a capture of the sessions into FILE, for `replay` [key
    /// capture].
    #[arg(long, value_name = "FILE")]
    pub capture: Option<PathBuf>,
}

/// `config ...`
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the effective configuration as TOML (the SMTP password is never
    /// shown). Takes the flags of `serve`, so it shows what `serve` would
    /// run with; a bad configuration exits 2 as `serve` would.
    Show(ServeArgs),
}

/// `client [--addr ADDR] ...`
#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The server's native listener, HOST:PORT [default: the configured
    /// listen, 127.0.0.1:7160].
    #[arg(long, global = true, value_name = "ADDR")]
    pub addr: Option<String>,
    /// How long to wait to connect and for each reply [default: 60s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Speak TLS, checking the server's certificate against the system's
    /// roots (and --ca).
    #[arg(long, global = true)]
    pub tls: bool,
    /// Also trust the certificates in this PEM file (implies --tls).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The name the server's certificate must carry [default: the host of
    /// --addr].
    #[arg(long, global = true, value_name = "NAME")]
    pub server_name: Option<String>,
    /// The request.
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// `client passcode|login|request`
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Ask for a passcode to be mailed: sends
    /// `require_passcode|MAC|PASSWORD|PHONE|EMAIL`.
    Passcode {
        /// The device's MAC address.
        #[arg(long)]
        mac: String,
        /// The account's email.
        #[arg(long)]
        email: String,
        /// The account's phone, if it has one on file.
        #[arg(long, default_value = "")]
        phone: String,
        /// Read the password from standard input (one line) instead of a
        /// prompt.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Log in with a mailed passcode: sends
    /// `MAC|EMAIL|PHONE|PASSWORD|PASSCODE` and stores the token, with the
    /// MAC it is bound to.
    Login {
        /// The device's MAC address.
        #[arg(long)]
        mac: String,
        /// The account's email.
        #[arg(long)]
        email: String,
        /// The account's phone, if it has one on file.
        #[arg(long, default_value = "")]
        phone: String,
        /// The passcode from the mail.
        #[arg(long)]
        passcode: String,
        /// Read the password from standard input (one line) instead of a
        /// prompt.
        #[arg(long)]
        password_stdin: bool,
        /// Where to store the token (mode 0600) [default:
        /// <data_dir>/client-token].
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Make a request with the stored token: sends
    /// `TOKEN|MAC|REQUEST|DATA...`; on `renew|<token>` (to any of the
    /// pipelined copies) stores the new token and retries those once.
    Request {
        /// The device's MAC address [default: the one `client login`
        /// stored with the token].
        #[arg(long)]
        mac: Option<String>,
        /// Send the request this many times, pipelined on one connection,
        /// and print every reply.
        #[arg(long, default_value_t = 1, value_name = "N")]
        repeat: usize,
        /// Where the token is [default: <data_dir>/client-token].
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// The request.
        request: String,
        /// Its data, joined with `|`.
        #[arg(allow_hyphen_values = true, trailing_var_arg = true)]
        data: Vec<String>,
    },
}

/// `store ...`
#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Copy a data folder's accounts, sessions, live passcodes and
    /// counters into a PostgreSQL database, in one transaction; records
    /// already there are left as they are, and every record is read back
    /// and compared (run it twice to check: the second copies nothing).
    /// The database takes the folder's server key (or `server_key`).
    Copy {
        /// The data folder with op_creds.db and op_passcodes.db.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The database, `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`.
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

/// `user ...`
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add an account; the password comes from a prompt or standard input.
    Add {
        /// The account's email.
        email: String,
        /// The account's phone.
        #[arg(long, default_value = "")]
        phone: String,
        /// Read the password from standard input (one line) instead of a
        /// prompt.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List accounts.
    List,
    /// Remove an account, its sessions and its passcodes.
    Remove {
        /// The account's email.
        email: String,
    },
    /// Change an account's password (ending its sessions).
    Passwd {
        /// The account's email.
        email: String,
        /// Read the password from standard input (one line).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Hash every plaintext password left by the old server.
    Rehash,
}

/// `session ...`
#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// List sessions, of one account or all.
    List {
        /// Only this account's.
        email: Option<String>,
    },
    /// End an account's sessions, or one device's.
    Revoke {
        /// The account's email.
        email: String,
        /// Only the session of this device.
        #[arg(long)]
        mac: Option<String>,
    },
}

/// `limits ...`
#[derive(Subcommand, Debug)]
pub enum LimitsCommand {
    /// Show the counters of an email, or of an IP address (an IPv6 address
    /// stands for its prefix), and whether each refuses requests now.
    Show {
        /// An email, or an IP address.
        subject: String,
    },
    /// Clear them: a locked or rate-limited email or client may try again
    /// at once, even on a running server.
    Reset {
        /// An email, or an IP address.
        subject: String,
    },
}

impl Cli {
    /// The effective configuration: the defaults, the file, the
    /// environment, then this command line's flags. Every command loads
    /// it (the data folder may come from it); an error is a configuration
    /// error.
    pub fn configuration(&self) -> Result<Configuration, Failure> {
        let path = |flag: &str, p: &PathBuf| {
            p.to_str().map(str::to_owned).ok_or_else(|| Failure::Usage(format!("{flag} is not UTF-8")))
        };
        let mut flags: Vec<(&str, String)> = Vec::new();
        if let Some(dir) = &self.data_dir {
            flags.push(("data_dir", path("--data-dir", dir)?));
        }
        if let Command::Serve(args) | Command::Config(ConfigCommand::Show(args)) = &self.command {
            let ServeArgs { runtime, listen, legacy_passcode_listen, legacy_login_listen, capture } = args;
            for (key, value) in [
                ("runtime", runtime),
                ("listen", listen),
                ("legacy_passcode_listen", legacy_passcode_listen),
                ("legacy_login_listen", legacy_login_listen),
            ] {
                if let Some(value) = value {
                    flags.push((key, value.clone()));
                }
            }
            if let Some(file) = capture {
                flags.push(("capture", path("--capture", file)?));
            }
        }
        Configuration::load(self.config.as_deref(), std::env::vars_os(), &flags).map_err(Failure::Usage)
    }

    /// Runs the command with the configuration from [`Cli::configuration`].
    pub fn run(&self, config: &Configuration) -> Result<(), Failure> {
        match &self.command {
            Command::Serve(_) => serve::run(config),
            Command::User(command) => admin::user(config, command),
            Command::Session(command) => admin::session(config, command),
            Command::Limits(command) => limits::run(config, command),
            Command::Backup { file } => backup::run(config, file),
            Command::Store(StoreCommand::Copy { from, to }) => store_copy::run(config, from, to),
            Command::Client(args) => client::run(config, args),
            Command::Replay { file } => replay::run(config, file),
            Command::Config(ConfigCommand::Show(_)) => {
                use std::io::Write;
                config.check_mail().map_err(Failure::Usage)?;
                std::io::stdout().lock().write_all(config.show().as_bytes())?;
                Ok(())
            }
        }
    }
}
