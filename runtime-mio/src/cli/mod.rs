//! The command line (SPEC section 7). Its spellings are part of the
//! contract: scripts and tests drive it.

mod admin;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
#[command(name = "tokenizer-auth", version, about)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data folder holding op_creds.db, op_passcodes.db and outbox/.
    #[arg(long, global = true, value_name = "DIR", env = "TOKENIZER_AUTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage sessions.
    #[command(subcommand)]
    Session(SessionCommand),
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

impl Cli {
    /// The data folder: `--data-dir`, else `./data`.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from("data"))
    }

    /// Runs the command.
    pub fn run(&self) -> Result<(), Failure> {
        match &self.command {
            Command::User(command) => admin::user(self, command),
            Command::Session(command) => admin::session(self, command),
        }
    }
}
