//! `client`: the native protocol from the command line, for trying a server
//! out and for scripts. One connection; a request may be pipelined
//! (`--repeat N`), and each reply is printed as it came.
//!
//! Passwords come from a prompt or standard input, never from the command
//! line; the session token lives in a file only its owner can read, and is
//! never printed. With `--tls` (or `--ca FILE`) the connection is TLS, and
//! the server's certificate must chain to the system's roots or the given
//! ones and name the host of `--addr` (or `--server-name`).

use std::fs;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use tokenizer_auth_effects::{private, tls};
use tokenizer_auth_engine::{BaseToken, LOGIN_PREFIX, Mac, Secret};

use super::config::{self, Configuration};
use super::{ClientArgs, ClientCommand, Failure, duration};

/// The reply to a passcode request that worked.
const PASSCODE_SENT: &str = "Passcode is sent";

/// The longest reply line read; real replies are under 200 bytes.
const MAX_REPLY: u64 = 64 * 1024;

pub(super) fn run(config: &Configuration, args: &ClientArgs) -> Result<(), Failure> {
    let timeout = match &args.timeout {
        Some(text) => duration::parse(text)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| Failure::Usage(format!("invalid --timeout {text:?}: write a duration like \"30s\"")))?,
        None => Duration::from_secs(60),
    };
    let addr = server_addr(config, args.addr.as_deref())?;
    let tls = tls_settings(args, addr)?;
    let connect = || Connection::open(addr, timeout, tls.as_ref());
    let token_file = |given: &Option<PathBuf>| given.clone().unwrap_or_else(|| config.data_dir().join("client-token"));
    let mut out = io::stdout().lock();
    match &args.command {
        ClientCommand::Passcode { mac, email, phone, password_stdin } => {
            let mac = mac_field(mac)?;
            let email = field("email", email, Field::Required)?;
            let phone = field("phone", phone, Field::Optional)?;
            let password = read_password(*password_stdin)?;
            let line = Secret::new(format!("require_passcode|{mac}|{}|{phone}|{email}", password.expose()));
            let reply = connect()?.ask(&line)?;
            if reply != PASSCODE_SENT {
                return Err(refused(&reply));
            }
            writeln!(out, "{reply}")?;
        }
        ClientCommand::Login { mac, email, phone, passcode, password_stdin, token_file: file } => {
            let mac = mac_field(mac)?;
            let email = field("email", email, Field::Required)?;
            let phone = field("phone", phone, Field::Optional)?;
            let passcode = field("passcode", passcode, Field::Required)?;
            let password = read_password(*password_stdin)?;
            let line = Secret::new(format!("{mac}|{email}|{phone}|{}|{passcode}", password.expose()));
            let reply = connect()?.ask(&line)?;
            let token = reply
                .strip_prefix(LOGIN_PREFIX)
                .and_then(|token| BaseToken::parse(token.as_bytes()))
                .ok_or_else(|| refused(&reply))?;
            store_token(&token_file(file), &token, mac)?;
            writeln!(out, "logged in")?;
        }
        ClientCommand::Request { mac, token_file: file, repeat, request, data } => {
            let file = token_file(file);
            let (token, stored_mac) = read_token(&file)?;
            // The MAC the token is bound to, as stored with it, unless given.
            let mac = match (mac, &stored_mac) {
                (Some(mac), _) => mac_field(mac)?,
                (None, Some(stored)) => stored.as_str(),
                (None, None) => {
                    return Err(Failure::Usage(format!(
                        "{} holds no MAC (it was written by an older client): give --mac",
                        file.display()
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
            let line = |token: &BaseToken| {
                let mut line = format!("{token}|{mac}|{request}");
                for item in data {
                    line.push('|');
                    line.push_str(item);
                }
                Secret::new(line)
            };
            let mut connection = connect()?;
            let mut replies = connection.pipeline(&line(&token), *repeat)?;
            // Every check of one expired token within the renewal grace is
            // told the same successor: store it once, and retry the
            // requests it answered with it, once.
            if let Some(renewed) = one_renewal(&replies)? {
                store_token(&file, &renewed, mac)?;
                eprintln!("the token expired and was renewed; the new one is in {}; retrying", file.display());
                let renewals = replies.iter().filter(|r| r.starts_with("renew|")).count();
                let mut retried = connection.pipeline(&line(&renewed), renewals)?.into_iter();
                for reply in replies.iter_mut().filter(|r| r.starts_with("renew|")) {
                    *reply = retried.next().unwrap_or_default();
                }
                if let Some(again) = one_renewal(&replies)? {
                    store_token(&file, &again, mac)?;
                    return Err(Failure::Other(
                        "the server renewed the token again on the retry; the newest token is stored".into(),
                    ));
                }
            }
            for reply in &replies {
                if reply == "False" || reply == "unauthorized" || reply.starts_with("error|") {
                    return Err(refused(reply));
                }
                writeln!(out, "{reply}")?;
            }
        }
    }
    Ok(())
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

/// The client's TLS, if asked for: the roots (the system's, and `--ca`)
/// and the name the certificate must carry.
fn tls_settings(
    args: &ClientArgs,
    addr: SocketAddr,
) -> Result<Option<(Arc<ClientConfig>, ServerName<'static>)>, Failure> {
    if !args.tls && args.ca.is_none() {
        return Ok(None);
    }
    let config = tls::client_config(args.ca.as_deref(), true).map_err(|e| Failure::Usage(format!("--ca: {e}")))?;
    let host = match (&args.server_name, &args.addr) {
        (Some(name), _) => name.clone(),
        // The host as written, without its port (and an IPv6 address's
        // brackets).
        (None, Some(text)) => {
            let host = text.rsplit_once(':').map_or(text.as_str(), |(host, _)| host);
            host.trim_start_matches('[').trim_end_matches(']').to_owned()
        }
        (None, None) => addr.ip().to_string(),
    };
    let name = ServerName::try_from(host.clone()).map_err(|_| {
        Failure::Usage(format!("{host:?} is not a host name or address to check a certificate against"))
    })?;
    Ok(Some((config, name)))
}

/// The reason for a reply that is not what the command wanted: the reply.
fn refused(reply: &str) -> Failure {
    Failure::Other(format!("server replied {}", reply.escape_debug()))
}

/// The new token of the `renew|<token>` replies among `replies`, if any:
/// one token, however many of them there are (docs/PROTOCOL.md,
/// "Renewal").
fn one_renewal(replies: &[String]) -> Result<Option<BaseToken>, Failure> {
    let mut renewed = None;
    for token in replies.iter().filter_map(|r| r.strip_prefix("renew|")) {
        let token = BaseToken::parse(token.as_bytes())
            .ok_or_else(|| Failure::Other("the server sent a renewal without a valid token".into()))?;
        if renewed.is_some_and(|first| first != token) {
            return Err(Failure::Other("the server renewed one token to two different tokens".into()));
        }
        renewed = Some(token);
    }
    Ok(renewed)
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

/// A field of the request line, checked: no control character (a line
/// break would end the line early), and no `|` but in the rest of the line.
fn field<'a>(name: &str, value: &'a str, kind: Field) -> Result<&'a str, Failure> {
    if value.chars().any(char::is_control) {
        return Err(Failure::Usage(format!("the {name} cannot hold control characters")));
    }
    if kind != Field::Rest && value.contains('|') {
        return Err(Failure::Usage(format!("the {name} cannot hold |")));
    }
    if kind == Field::Required && value.is_empty() {
        return Err(Failure::Usage(format!("the {name} is empty")));
    }
    Ok(value)
}

/// The MAC as given (the server normalizes it), once it parses as one.
fn mac_field(text: &str) -> Result<&str, Failure> {
    Mac::parse(text).map(|_| text).ok_or_else(|| Failure::Usage(format!("invalid MAC {text:?}")))
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
    if password.expose().contains('|') || password.expose().chars().any(char::is_control) {
        return Err(Failure::Usage("a password cannot hold | or control characters".into()));
    }
    Ok(password)
}

/// A byte stream to the server: TCP, or TLS over it.
trait Stream: Read + Write {}

impl<T: Read + Write> Stream for T {}

/// One connection to the native listener.
struct Connection {
    addr: SocketAddr,
    timeout: Duration,
    reader: BufReader<Box<dyn Stream>>,
}

impl Connection {
    /// Connects, and with TLS completes the handshake, so that a
    /// certificate the client refuses is said before any request is sent.
    fn open(
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<&(Arc<ClientConfig>, ServerName<'static>)>,
    ) -> Result<Connection, Failure> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| Failure::Other(format!("cannot connect to {addr}: {e}")))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let stream: Box<dyn Stream> = match tls {
            None => Box::new(stream),
            Some((config, name)) => {
                let failed = |e: &dyn std::fmt::Display| Failure::Other(format!("TLS with {addr} failed: {e}"));
                let mut conn = ClientConnection::new(Arc::clone(config), name.clone()).map_err(|e| failed(&e))?;
                while conn.is_handshaking() {
                    conn.complete_io(&mut stream).map_err(|e| failed(&e))?;
                }
                Box::new(StreamOwned::new(conn, stream))
            }
        };
        Ok(Connection { addr, timeout, reader: BufReader::new(stream) })
    }

    /// Sends `line` (which may hold a password or a token, so no error
    /// repeats it) and returns the reply line without its line ending.
    fn ask(&mut self, line: &Secret) -> Result<String, Failure> {
        Ok(self.pipeline(line, 1)?.pop().unwrap_or_default())
    }

    /// Sends `line` `count` times in one write, then reads the `count`
    /// replies, in order.
    fn pipeline(&mut self, line: &Secret, count: usize) -> Result<Vec<String>, Failure> {
        let mut bytes = Vec::with_capacity((line.len() + 1) * count);
        for _ in 0..count {
            bytes.extend_from_slice(line.expose().as_bytes());
            bytes.push(b'\n');
        }
        let stream = self.reader.get_mut();
        let sent = stream.write_all(&bytes).and_then(|()| stream.flush());
        bytes.fill(0);
        sent.map_err(|e| self.broke(e))?;
        (0..count).map(|_| self.reply()).collect()
    }

    fn broke(&self, e: io::Error) -> Failure {
        if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
            Failure::Other(format!("no reply from {} within {}", self.addr, duration::format(self.timeout)))
        } else {
            Failure::Other(format!("connection to {} failed: {e}", self.addr))
        }
    }

    /// The next reply line, without its line ending.
    fn reply(&mut self) -> Result<String, Failure> {
        let addr = self.addr;
        let mut reply = Vec::new();
        let read = (&mut self.reader).take(MAX_REPLY).read_until(b'\n', &mut reply);
        read.map_err(|e| self.broke(e))?;
        if reply.pop() != Some(b'\n') {
            return Err(Failure::Other(format!("{addr} closed the connection without a reply")));
        }
        if reply.last() == Some(&b'\r') {
            reply.pop();
        }
        String::from_utf8(reply).map_err(|_| Failure::Other(format!("{addr} replied with bytes that are not UTF-8")))
    }
}

/// The stored token, and the MAC stored with it (a file written before
/// the MAC was kept holds the token alone), or a clear reason there is
/// none.
fn read_token(path: &Path) -> Result<(BaseToken, Option<String>), Failure> {
    let text = match fs::read_to_string(path) {
        Ok(text) => Secret::new(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Failure::Other(format!(
                "no token file {}: log in first with `tokenizer-auth client login`",
                path.display()
            )));
        }
        Err(e) => return Err(Failure::Other(format!("cannot read the token file {}: {e}", path.display()))),
    };
    let mut fields = text.expose().split_whitespace();
    let token = fields
        .next()
        .and_then(|t| BaseToken::parse(t.as_bytes()))
        .ok_or_else(|| Failure::Other(format!("the token file {} does not hold a token", path.display())))?;
    let mac = match fields.next() {
        None => None,
        Some(mac) if Mac::parse(mac).is_some() => Some(mac.to_owned()),
        Some(_) => return Err(Failure::Other(format!("the token file {} holds no valid MAC", path.display()))),
    };
    Ok((token, mac))
}

/// Replaces the token file, all or nothing, with a file only its owner can
/// read (mode 0600): the token and the MAC it is bound to, on one line; a
/// missing folder is created (mode 0700).
fn store_token(path: &Path, token: &BaseToken, mac: &str) -> Result<(), Failure> {
    let failed = |e: io::Error| Failure::Other(format!("cannot write the token file {}: {e}", path.display()));
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    private::create_dir(&dir).map_err(failed)?;

    let name = path.file_name().map_or_else(|| "client-token".into(), |n| n.to_string_lossy().into_owned());
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&temp);
    let written = private::create_new_file(&temp).and_then(|mut file| {
        file.write_all(format!("{token} {mac}\n").as_bytes())?;
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&temp, path)) {
        let _ = fs::remove_file(&temp);
        return Err(failed(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_privately_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new-folder").join("token");
        let token = BaseToken::parse("ab".repeat(32).as_bytes()).unwrap();
        let mac = "aa:bb:cc:dd:ee:ff";
        store_token(&path, &token, mac).unwrap();
        assert_eq!(read_token(&path).unwrap(), (token, Some(mac.to_owned())));
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{} {mac}\n", "ab".repeat(32)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        }
        let other = BaseToken::parse("cd".repeat(32).as_bytes()).unwrap();
        store_token(&path, &other, mac).unwrap();
        assert_eq!(read_token(&path).unwrap(), (other, Some(mac.to_owned())));
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file is left");

        // A file of an older client: the token alone.
        fs::write(&path, format!("{}\n", "cd".repeat(32))).unwrap();
        assert_eq!(read_token(&path).unwrap(), (other, None));
        fs::write(&path, format!("{} not-a-mac\n", "cd".repeat(32))).unwrap();
        assert!(matches!(read_token(&path), Err(Failure::Other(r)) if r.contains("no valid MAC")));
        fs::write(&path, "not a token").unwrap();
        assert!(matches!(read_token(&path), Err(Failure::Other(r)) if r.contains("does not hold a token")));
        let missing = read_token(&dir.path().join("missing"));
        assert!(matches!(missing, Err(Failure::Other(r)) if r.contains("log in first")));
    }

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
        assert!(mac_field("AA-BB-CC-DD-EE-FF").is_ok());
        assert!(mac_field("not-a-mac").is_err());
    }
}
