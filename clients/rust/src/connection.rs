//! One connection to the native listener, plaintext or TLS: request bytes
//! out, replies in. Every connect, read and write has the client's timeout,
//! and a reply line is read up to [`MAX_REPLY`] bytes, no further.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tokenizer_auth_engine::Reply;
use tokenizer_auth_engine::codec::native::{Frame, next_frame};
use tokenizer_auth_engine::codec::pickle;
use tokenizer_auth_engine::codec::reply::ReplyError;

use crate::Error;

/// The longest reply line read. Real replies are under 200 bytes; the
/// bound keeps a broken or hostile peer from growing memory without end.
pub const MAX_REPLY: usize = 64 * 1024;

/// Bytes asked of the socket per read.
const CHUNK: usize = 16 * 1024;

/// What a TLS connection checks: the roots, and the name the server's
/// certificate must carry.
#[derive(Clone)]
pub(crate) struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Tls {
    /// Trusts the system's roots and the certificates in the PEM file `ca`
    /// if given; the certificate must name `name` (a host name or an IP
    /// address).
    pub(crate) fn new(ca: Option<&Path>, name: &str) -> Result<Tls, Error> {
        let name = ServerName::try_from(name.to_owned()).map_err(|_| {
            Error::TlsConfig(format!("{name:?} is not a host name or address to check a certificate against"))
        })?;
        let mut roots = RootCertStore::empty();
        // Unreadable system certificates leave the others; with none at
        // all, only `ca` is trusted.
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = ca {
            let bad = |why: String| Error::TlsConfig(format!("cannot use {}: {why}", path.display()));
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect())
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::TlsConfig(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls { config: Arc::new(config), name })
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A connected stream, and what has been read of it but not yet taken.
pub(crate) struct Connection {
    addr: String,
    timeout: Duration,
    stream: Stream,
    received: Vec<u8>,
    /// Where the untaken bytes of `received` start.
    start: usize,
    /// Reply lines taken so far.
    pub(crate) replies: u64,
}

impl Connection {
    /// Connects to the first of `addrs` that answers (`addr` names them in
    /// errors) and, with TLS, completes the handshake: a certificate that
    /// is refused is refused here, before any request is sent.
    pub(crate) fn open(
        addr: &str,
        addrs: &[SocketAddr],
        timeout: Duration,
        tls: Option<&Tls>,
    ) -> Result<Connection, Error> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
        let mut tcp = None;
        for candidate in addrs {
            match TcpStream::connect_timeout(candidate, timeout) {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let connect = |source| Error::Connect { addr: addr.to_owned(), source };
        let mut tcp = tcp.ok_or_else(|| connect(last))?;
        // Requests are small and answered one by one: no Nagle delay.
        tcp.set_nodelay(true).map_err(connect)?;
        tcp.set_read_timeout(Some(timeout)).map_err(connect)?;
        tcp.set_write_timeout(Some(timeout)).map_err(connect)?;
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(tls) => {
                let failed = |reason: String| Error::Tls { addr: addr.to_owned(), reason };
                let mut conn = ClientConnection::new(Arc::clone(&tls.config), tls.name.clone())
                    .map_err(|e| failed(e.to_string()))?;
                while conn.is_handshaking() {
                    conn.complete_io(&mut tcp).map_err(|e| match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                            Error::Timeout { addr: addr.to_owned(), after: timeout }
                        }
                        _ => failed(e.to_string()),
                    })?;
                }
                Stream::Tls(Box::new(StreamOwned::new(conn, tcp)))
            }
        };
        Ok(Connection { addr: addr.to_owned(), timeout, stream, received: Vec::new(), start: 0, replies: 0 })
    }

    /// Sends all of `bytes` (request lines, which no error repeats).
    pub(crate) fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let sent = self.stream.write_all(bytes).and_then(|()| self.stream.flush());
        sent.map_err(|e| self.failure(e))
    }

    /// The next reply. A line that is no reply of the protocol breaks the
    /// connection's step with its requests: [`Error::Protocol`]. An error
    /// code this version does not know is a reply all the same, given as
    /// [`Error::UnknownCode`]: the connection goes on.
    pub(crate) fn reply(&mut self) -> Result<Reply, Error> {
        loop {
            match next_frame(&self.received[self.start..], MAX_REPLY) {
                Frame::Line { line, consumed } => {
                    let reply = parse(line);
                    self.start += consumed;
                    self.replies += 1;
                    return reply;
                }
                Frame::TooLong => {
                    return Err(Error::Protocol(format!("{} sent a reply line over {MAX_REPLY} bytes", self.addr)));
                }
                Frame::Incomplete => self.receive()?,
            }
        }
    }

    /// Reads what the socket has, after what is not yet taken.
    fn receive(&mut self) -> Result<(), Error> {
        self.received.drain(..self.start);
        self.start = 0;
        let held = self.received.len();
        self.received.resize(held + CHUNK, 0);
        let read = self.stream.read(&mut self.received[held..]);
        self.received.truncate(held + read.as_ref().map_or(0, |&n| n));
        match read {
            Ok(0) if self.received.first() == Some(&pickle::FIRST_BYTE) => Err(Error::Protocol(format!(
                "{} answered with a pickle: is it a legacy port rather than the native one?",
                self.addr
            ))),
            Ok(0) => Err(Error::Closed { addr: self.addr.clone() }),
            Ok(_) => Ok(()),
            Err(e) => Err(self.failure(e)),
        }
    }

    fn failure(&self, e: io::Error) -> Error {
        let addr = self.addr.clone();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout { addr, after: self.timeout },
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Error::Closed { addr },
            _ => Error::Io { addr, source: e },
        }
    }
}

/// One reply line, parsed; the error never repeats the line (it could
/// hold a token).
fn parse(line: &[u8]) -> Result<Reply, Error> {
    let violation = |what: &str| Error::Protocol(format!("a reply of {} bytes that is {what}", line.len()));
    let text = core::str::from_utf8(line).map_err(|_| violation("not UTF-8"))?;
    Reply::parse(text).map_err(|e| match e {
        ReplyError::NotAReply => violation("not one of the native protocol"),
        ReplyError::UnknownCode(code) => Error::UnknownCode(code),
    })
}
