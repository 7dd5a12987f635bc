//! TLS on the native listener (docs/SECURITY.md, "TLS"), for both runtimes.
//!
//! rustls's [`ServerConnection`] is itself sans-IO, so it sits between the
//! socket and the engine the way the engine sits between the socket and
//! the effects: the runtime hands it the bytes a socket gave and writes out
//! the bytes it makes; the engine only ever sees plaintext, so its
//! decisions, captures and replays are the same with or without TLS.
//!
//! One [`TlsSession`] per connection does three jobs:
//! - ciphertext in, plaintext (for the engine) and handshake records (for
//!   the socket) out ([`TlsSession::receive`]);
//! - the engine's plaintext in, records out ([`TlsSession::transmit`]);
//! - the engine's accounting: the engine bounds what a peer leaves unread
//!   by the plaintext the runtime reports sent ([`Input::Sent`]). A ledger
//!   maps the ciphertext the socket took back to the plaintext it carries
//!   ([`TlsSession::took`]), so a reply counts as sent only once its last
//!   record is on the socket, and a client that reads nothing stalls the
//!   engine's count exactly as in plaintext.
//!
//! The handshake is bounded like a partial line: a connection counts
//! against `max_connections` from its accept (the engine is told then), and
//! one whose handshake is not done within `partial_line_timeout` has
//! failed ([`TlsSession::handshake_overdue`]). A broken handshake or record
//! is a failed connection ([`Input::Failed`]): the engine closes it.
//!
//! [`Input::Sent`]: tokenizer_auth_engine::Input::Sent
//! [`Input::Failed`]: tokenizer_auth_engine::Input::Failed

use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConnection;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The certificate chain and key files (PEM) of the native listener.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (`tls_cert`).
    pub cert: PathBuf,
    /// The private key (`tls_key`): PKCS#8, PKCS#1 or SEC1.
    pub key: PathBuf,
}

/// Why a certificate and key cannot serve.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the TLS certificate {} and key {}: {why}", files.cert.display(), files.key.display())]
pub struct TlsError {
    files: TlsFiles,
    why: String,
}

/// The native listener's TLS configuration, shared by every connection and
/// replaced whole by [`TlsConfig::reload`] (SIGHUP): connections already
/// open keep the configuration they started with.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    files: TlsFiles,
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl TlsConfig {
    /// Loads the files; fails with what is wrong with them.
    pub fn load(files: TlsFiles) -> Result<TlsConfig, TlsError> {
        let config = server_config(&files)?;
        Ok(TlsConfig { files, current: Arc::new(RwLock::new(config)) })
    }

    /// Loads the files again, for the handshakes from now on. A pair that
    /// does not load keeps the one in use, and the log says why.
    pub fn reload(&self) {
        match server_config(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::warn!(error = %e, "TLS certificate not reloaded: the one in use stays"),
        }
    }

    /// The TLS side of a connection accepted now.
    pub fn session(&self) -> Result<TlsSession, rustls::Error> {
        let config = Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()));
        let mut conn = ServerConnection::new(config)?;
        // Records are drained into the runtime's queue as they are made,
        // and the engine bounds that queue: rustls need not bound it again.
        conn.set_buffer_limit(None);
        Ok(TlsSession { conn, opened: Instant::now(), ledger: VecDeque::new(), queued: 0, taken: 0 })
    }
}

fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let fail = |why: String| TlsError { files: files.clone(), why };
    let certs = read_certs(&files.cert).map_err(|e| fail(format!("the certificate: {e}")))?;
    if certs.is_empty() {
        return Err(fail("the certificate file holds no certificate".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| fail(format!("the key: {e}")))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_no_client_auth()
        // Checks that the key is the certificate's.
        .with_single_cert(certs, key)
        .map_err(|e| fail(e.to_string()))?;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, rustls::pki_types::pem::Error> {
    CertificateDer::pem_file_iter(path)?.collect()
}

/// The cryptography of both sides: ring, with rustls's safe defaults.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client's configuration (the `client` command, the load generator):
/// it trusts the system's roots if `system_roots`, and the certificates in
/// the PEM file `ca` if given; the error says what is wrong with `ca`.
pub fn client_config(ca: Option<&Path>, system_roots: bool) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    if system_roots {
        // Unreadable system certificates leave the others; with none at
        // all, only `ca` is trusted.
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    }
    if let Some(path) = ca {
        let bad = |e: String| format!("cannot use {}: {e}", path.display());
        let certs = read_certs(path).map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What a peer's bytes did to its connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Received {
    /// Go on.
    Open,
    /// The peer closed its side cleanly (close_notify): no more input.
    Closed,
}

/// One connection's TLS: rustls's state, and the ledger from ciphertext
/// taken by the socket back to the engine's plaintext (see the module
/// docs).
pub struct TlsSession {
    conn: ServerConnection,
    opened: Instant,
    /// (where its last record ends in the stream of bytes for the socket,
    /// its length in plaintext), for each transmit not yet all taken.
    ledger: VecDeque<(u64, usize)>,
    /// Bytes handed to the socket's queue so far.
    queued: u64,
    /// Bytes the socket took so far.
    taken: u64,
}

impl TlsSession {
    /// Takes ciphertext the socket gave: appends the plaintext it carries
    /// to `plain` (for the engine) and what TLS answers (handshake records,
    /// alerts) to `wire` (for the socket). An error means the peer broke
    /// TLS; any alert for it is in `wire`, and the connection has failed.
    pub fn receive(
        &mut self,
        mut bytes: &[u8],
        plain: &mut Vec<u8>,
        wire: &mut Vec<u8>,
    ) -> Result<Received, rustls::Error> {
        let mut state = Received::Open;
        while !bytes.is_empty() {
            // Reads at most one buffer's worth; the loop drains it each time.
            if self.conn.read_tls(&mut bytes).is_err() {
                return Err(rustls::Error::General("the peer sent more than TLS buffers".to_owned()));
            }
            let processed = self.conn.process_new_packets();
            self.emit(wire);
            let io_state = processed?;
            if io_state.plaintext_bytes_to_read() > 0 {
                let start = plain.len();
                plain.resize(start + io_state.plaintext_bytes_to_read(), 0);
                // Exactly what rustls said it holds; it cannot fail.
                let read = self.conn.reader().read(&mut plain[start..]).unwrap_or(0);
                plain.truncate(start + read);
            }
            if io_state.peer_has_closed() {
                state = Received::Closed;
            }
        }
        Ok(state)
    }

    /// Encrypts what the engine transmitted, appending the records to
    /// `wire`. Before the handshake is done rustls keeps it, and sends it
    /// with the handshake's last flight.
    pub fn transmit(&mut self, plain: &[u8], wire: &mut Vec<u8>) {
        // Unbounded buffer (see `session`): the writer takes everything.
        let _ = io::Write::write_all(&mut self.conn.writer(), plain);
        self.emit(wire);
        self.ledger.push_back((self.queued, plain.len()));
    }

    /// Appends a close_notify to `wire`: no more replies (a half-close,
    /// in TLS).
    pub fn close(&mut self, wire: &mut Vec<u8>) {
        self.conn.send_close_notify();
        self.emit(wire);
    }

    /// The socket took `n` more bytes of what this session put in the
    /// queue: returns the plaintext now sent (transmits whose last record
    /// the socket has taken).
    pub fn took(&mut self, n: usize) -> usize {
        self.taken += n as u64;
        let mut sent = 0;
        while let Some(&(end, len)) = self.ledger.front() {
            if end > self.taken {
                break;
            }
            sent += len;
            self.ledger.pop_front();
        }
        sent
    }

    /// Whether the handshake is not done after `limit` (the engine's
    /// `partial_line_timeout`) since the accept.
    pub fn handshake_overdue(&self, now: Instant, limit: Duration) -> bool {
        self.handshake_deadline(limit).is_some_and(|due| due <= now)
    }

    /// When the handshake becomes overdue, if it is still under way.
    pub fn handshake_deadline(&self, limit: Duration) -> Option<Instant> {
        self.conn.is_handshaking().then(|| self.opened + limit)
    }

    /// Moves the records rustls made to `wire`.
    fn emit(&mut self, wire: &mut Vec<u8>) {
        let before = wire.len();
        while self.conn.wants_write() {
            // Writing to a `Vec` cannot fail.
            if self.conn.write_tls(wire).is_err() {
                break;
            }
        }
        self.queued += (wire.len() - before) as u64;
    }
}
