//! `client`: the native protocol from the command line, for trying a server
//! out and for scripts, on the Rust client library
//! (`tokenizer-auth-client`, which speaks the protocol). One connection; a
//! request may be pipelined (`--repeat N`), and each reply is printed as
//! it came.
//!
//! Passwords come from a prompt or standard input, never from the command
//! line; the session token lives in a file only its owner can read, and is
//! never printed. With `--tls` (or `--ca FILE`) the connection is TLS, and
//! the server's certificate must chain to the system's roots or the given
//! ones and name the host of `--addr` (or `--server-name`).

use std::io::{self, BufRead, IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokenizer_auth_client::{
    Call, Client, DeviceMac, Error, FileTokenStore, MemoryTokenStore, Options, StoredToken, TokenStore,
};
use tokenizer_auth_engine::codec::request::{SEPARATOR, check_field};
use tokenizer_auth_engine::{Reply, Secret};

use super::config::{self, Configuration};
use super::{ClientArgs, ClientCommand, Failure, duration};

pub(super) fn run(config: &Configuration, args: &ClientArgs) -> Result<(), Failure> {
    let timeout = match &args.timeout {
        Some(text) => duration::parse(text)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| Failure::Usage(format!("invalid --timeout {text:?}: write a duration like \"30s\"")))?,
        None => Duration::from_secs(60),
    };
    let addr = server_addr(config, args.addr.as_deref())?;
    let connect = |mac: Option<DeviceMac>, store: Box<dyn TokenStore>| {
        let options = Options {
            tls: args.tls,
            ca: args.ca.clone(),
            server_name: Some(server_name(args, addr)),
            timeout,
            mac,
            store,
            ..Options::default()
        };
        Client::connect(&addr.to_string(), options).map_err(failure)
    };
    let token_file = |given: &Option<PathBuf>| given.clone().unwrap_or_else(|| config.data_dir().join("client-token"));
    let mut out = io::stdout().lock();
    match &args.command {
        ClientCommand::Passcode { mac, email, phone, password_stdin } => {
            let mac = mac_field(mac)?;
            let email = field("email", email, Field::Required)?;
            let phone = field("phone", phone, Field::Optional)?;
            let password = read_password(*password_stdin)?;
            let mut client = connect(Some(mac), Box::new(MemoryTokenStore::new()))?;
            client.request_passcode(email, phone, password.expose()).map_err(failure)?;
            writeln!(out, "{}", text(Reply::PasscodeSent))?;
        }
        ClientCommand::Login { mac, email, phone, passcode, password_stdin, token_file: file } => {
            let mac = mac_field(mac)?;
            let email = field("email", email, Field::Required)?;
            let phone = field("phone", phone, Field::Optional)?;
            let passcode = field("passcode", passcode, Field::Required)?;
            let password = read_password(*password_stdin)?;
            let mut client = connect(Some(mac), Box::new(FileTokenStore::new(token_file(file))))?;
            client.login(email, phone, password.expose(), passcode).map_err(failure)?;
            writeln!(out, "logged in")?;
        }
        ClientCommand::Request { mac, token_file: file, repeat, request, data } => {
            let store = FileTokenStore::new(token_file(file));
            let stored = store.load().map_err(|e| Failure::Other(e.to_string()))?.ok_or_else(|| {
                Failure::Other(format!(
                    "no token file {}: log in first with `tokenizer-auth client login`",
                    store.path().display()
                ))
            })?;
            // The MAC the token is bound to, as stored with it, unless given.
            let mac = match (mac, &stored.mac) {
                (Some(mac), _) => Some(mac_field(mac)?),
                (None, Some(_)) => None,
                (None, None) => {
                    return Err(Failure::Usage(format!(
                        "{} holds no MAC (it was written by an older client): give --mac",
                        store.path().display()
                    )));
                }
            };
            let request = field("request", request, Field::Required)?;
            for item in data {
                field("data", item, Field::Rest)?;
            }
            if *repeat == 0 {
                return Err(Failure::Usage("--repeat must be at least 1".into()));
            }
            // DATA arguments are the free-form rest of the line: the
            // fields are what lies between their separators.
            let data: Vec<&str> = data.iter().flat_map(|item| item.split(SEPARATOR)).collect();
            let mut client = connect(mac, Box::new(Announced(store)))?;
            let results = client.pipeline(&vec![Call::Request { request, data: &data }; *repeat]).map_err(failure)?;
            // A renewal on the retry is said before any reply is printed.
            if results.iter().any(|result| matches!(result, Err(Error::TokenRenewedAgain))) {
                return Err(failure(Error::TokenRenewedAgain));
            }
            for result in results {
                result.map_err(failure)?;
                writeln!(out, "{}", text(Reply::Authorized))?;
            }
        }
    }
    Ok(())
}

/// The token file, which says on standard error when a renewal replaces
/// the token (the library stores a renewal once per burst).
struct Announced(FileTokenStore);

impl TokenStore for Announced {
    fn load(&self) -> io::Result<Option<StoredToken>> {
        self.0.load()
    }

    fn save(&self, stored: &StoredToken) -> io::Result<()> {
        self.0.save(stored)?;
        eprintln!("the token expired and was renewed; the new one is in {}; retrying", self.0.path().display());
        Ok(())
    }
}

/// The server to talk to: `--addr`, else the configured native listener
/// (an unspecified address such as 0.0.0.0 means this machine).
fn server_addr(config: &Configuration, given: Option<&str>) -> Result<SocketAddr, Failure> {
    if let Some(text) = given {
        return config::address(text).map_err(|reason| Failure::Usage(format!("invalid --addr: {reason}")));
    }
    let mut addr = config.listen();
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    if addr.port() == 0 {
        return Err(Failure::Usage("the configured listen port is 0 (any free port): give the server's --addr".into()));
    }
    Ok(addr)
}

/// The name the server's certificate must carry: `--server-name`, else
/// the host of `--addr` as written (without its port, and an IPv6
/// address's brackets), else the address.
fn server_name(args: &ClientArgs, addr: SocketAddr) -> String {
    match (&args.server_name, &args.addr) {
        (Some(name), _) => name.clone(),
        (None, Some(text)) => {
            let host = text.rsplit_once(':').map_or(text.as_str(), |(host, _)| host);
            host.trim_start_matches('[').trim_end_matches(']').to_owned()
        }
        (None, None) => addr.ip().to_string(),
    }
}

/// How a failed call ends the command: a refusal with the server's reply
/// (exit 1), settings that cannot be used (exit 2), anything else with its
/// reason (exit 1).
fn failure(e: Error) -> Failure {
    match e.reply() {
        Some(reply) => Failure::Other(format!("server replied {}", text(reply))),
        None if matches!(e, Error::Field { .. } | Error::TlsConfig(_)) => Failure::Usage(e.to_string()),
        None => Failure::Other(e.to_string()),
    }
}

/// A reply's text, as the server sends it (only replies without a token
/// are printed).
fn text(reply: Reply) -> String {
    let mut text = Vec::new();
    reply.write_text(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// What a field of the request line may hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    /// Something, but no `|`.
    Required,
    /// Anything but `|`, nothing included.
    Optional,
    /// The free-form rest of the line: `|` allowed.
    Rest,
}

/// A field of the request line, checked before anything is sent (so a
/// mistake is a usage error): no control character (a line break would
/// end the line early), and no `|` but in the rest of the line.
fn field<'a>(name: &str, value: &'a str, kind: Field) -> Result<&'a str, Failure> {
    let checked = match kind {
        Field::Required => check_field(value, true),
        Field::Optional => check_field(value, false),
        Field::Rest => value.split(SEPARATOR).try_for_each(|part| check_field(part, false)),
    };
    checked.map_err(|e| Failure::Usage(format!("the {name} {}", e.reason())))?;
    Ok(value)
}

/// The MAC as given (the token file keeps that spelling), once it parses
/// as one.
fn mac_field(text: &str) -> Result<DeviceMac, Failure> {
    DeviceMac::parse(text).map_err(|_| Failure::Usage(format!("invalid MAC {text:?}")))
}

/// The account's password, from standard input (one line) or a prompt.
fn read_password(from_stdin: bool) -> Result<Secret, Failure> {
    let password = if from_stdin {
        let mut line = String::new();
        io::stdin().lock().read_line(&mut line)?;
        Secret::new(line.trim_end_matches(['\r', '\n']))
    } else {
        if !io::stdin().is_terminal() {
            return Err(Failure::Usage("no terminal to ask for the password: use --password-stdin".into()));
        }
        Secret::new(rpassword::prompt_password("Password: ")?)
    };
    if password.is_empty() {
        return Err(Failure::Usage("the password is empty".into()));
    }
    if check_field(password.expose(), true).is_err() {
        return Err(Failure::Usage("a password cannot hold | or control characters".into()));
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_that_would_break_the_line_are_refused() {
        assert!(field("email", "a@b.example", Field::Required).is_ok());
        assert!(field("email", "a|b@example", Field::Required).is_err());
        assert!(field("email", "", Field::Required).is_err());
        assert!(field("email", "a@b\nrequire_passcode", Field::Required).is_err());
        assert!(field("phone", "", Field::Optional).is_ok());
        assert!(field("phone", "1|2", Field::Optional).is_err());
        assert!(field("data", "x|y|z", Field::Rest).is_ok());
        assert!(field("data", "x\r", Field::Rest).is_err());
        assert!(mac_field("AA-BB-CC-DD-EE-FF").is_ok_and(|mac| mac.as_str() == "AA-BB-CC-DD-EE-FF"));
        assert!(mac_field("not-a-mac").is_err());
    }

    #[test]
    fn refusals_are_told_with_the_reply_and_settings_are_usage() {
        let told = |e: Error| match failure(e) {
            Failure::Other(reason) => (1, reason),
            Failure::Usage(reason) => (2, reason),
        };
        assert_eq!(told(Error::CredentialsRejected), (1, "server replied False".into()));
        assert_eq!(told(Error::Unauthorized), (1, "server replied unauthorized".into()));
        assert_eq!(told(Error::RateLimited), (1, "server replied error|rate_limited".into()));
        assert_eq!(told(Error::TlsConfig("cannot use ca.pem: no certificate in it".into())).0, 2);
        assert_eq!(told(Error::Closed { addr: "127.0.0.1:9".into() }).0, 1);
    }
}
