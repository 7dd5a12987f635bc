//! [`Client`]: one connection to the native listener, the calls, and the
//! bursts that carry them (pipelining and renewal).

use core::fmt;
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use tokenizer_auth_engine::codec::request::{
    LoginRequest, PasscodeRequest, Request, TokenRequest, check_field, join_data,
};
use tokenizer_auth_engine::{BaseToken, Reply, Secret};

use crate::connection::{Connection, Tls};
use crate::{DeviceMac, Error, MemoryTokenStore, StoredToken, TokenStore};

/// Requests in flight at most on a connection, by default: a burst never
/// leaves more replies unread than the server's `max_backlog` (64 KiB)
/// holds.
pub const DEFAULT_WINDOW: usize = 128;

/// How a [`Client`] connects, and where its token lives.
pub struct Options {
    /// Speak TLS, trusting the system's roots (and [`ca`](Options::ca)).
    pub tls: bool,
    /// Also trust the certificates in this PEM file; implies TLS.
    pub ca: Option<PathBuf>,
    /// The name the server's certificate must carry (a host name or an IP
    /// address); by default the host of the address given to
    /// [`Client::connect`].
    pub server_name: Option<String>,
    /// The limit on each connect, send and read (more than 0).
    pub timeout: Duration,
    /// The device's MAC address: needed to ask for a passcode and to log
    /// in; requests use the MAC stored with the token unless this is set.
    pub mac: Option<DeviceMac>,
    /// Where the token lives between calls.
    pub store: Box<dyn TokenStore>,
    /// Requests in flight at most during a [`Client::pipeline`] (at least
    /// 1).
    pub window: usize,
}

impl Default for Options {
    /// Plaintext, a 30-second timeout, no MAC, the token in memory, a
    /// window of [`DEFAULT_WINDOW`].
    fn default() -> Options {
        Options {
            tls: false,
            ca: None,
            server_name: None,
            timeout: Duration::from_secs(30),
            mac: None,
            store: Box::new(MemoryTokenStore::new()),
            window: DEFAULT_WINDOW,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .field("server_name", &self.server_name)
            .field("timeout", &self.timeout)
            .field("mac", &self.mac)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// One request of a [`Client::pipeline`].
#[derive(Clone, Copy)]
pub enum Call<'a> {
    /// A request made with the stored token, renewed transparently:
    /// `REQUEST` and its `DATA` fields (the device's own, opaque to the
    /// server); answered `authorized`.
    Request {
        /// What the device asks for.
        request: &'a str,
        /// Its data fields (none may hold `|`; they may be empty).
        data: &'a [&'a str],
    },
    /// A passcode request for this device (as
    /// [`Client::request_passcode`]); answered once the mail is sent.
    Passcode {
        /// The account.
        email: &'a str,
        /// The account's phone (empty if it has none on file).
        phone: &'a str,
        /// The account's password.
        password: &'a str,
    },
}

/// A password is a secret: debug output never shows it.
impl fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Request { request, data } => {
                f.debug_struct("Request").field("request", request).field("data", data).finish()
            }
            Call::Passcode { email, phone, .. } => f
                .debug_struct("Passcode")
                .field("email", email)
                .field("phone", phone)
                .field("password", &"[redacted]")
                .finish(),
        }
    }
}

/// A client of the native listener: one connection, kept between calls.
/// Calls block; share a client between threads behind a `Mutex`.
pub struct Client {
    addr: String,
    addrs: Vec<SocketAddr>,
    tls: Option<Tls>,
    timeout: Duration,
    window: usize,
    mac: Option<DeviceMac>,
    store: Box<dyn TokenStore>,
    connection: Option<Connection>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("mac", &self.mac)
            .field("connected", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the native listener at `addr` (`host:port`) and, with
    /// TLS, completes the handshake: a certificate that is untrusted,
    /// expired or for another name is refused here, before any request is
    /// sent.
    pub fn connect(addr: &str, options: Options) -> Result<Client, Error> {
        let Options { tls, ca, server_name, timeout, mac, store, window } = options;
        let mut checked_tls = None;
        if tls || ca.is_some() {
            let name = server_name.as_deref().unwrap_or_else(|| host_of(addr));
            checked_tls = Some(Tls::new(ca.as_deref(), name)?);
        }
        let addrs: Vec<SocketAddr> =
            addr.to_socket_addrs().map_err(|source| Error::Connect { addr: addr.to_owned(), source })?.collect();
        let mut client = Client {
            addr: addr.to_owned(),
            addrs,
            tls: checked_tls,
            timeout,
            window: window.max(1),
            mac,
            store,
            connection: None,
        };
        client.connection = Some(client.open()?);
        Ok(client)
    }

    /// Asks the server to mail a passcode for this device (the account's
    /// `phone` may be empty if it has none on file). Returns once the
    /// passcode is sent; wrong credentials are [`Error::CredentialsRejected`].
    pub fn request_passcode(&mut self, email: &str, phone: &str, password: &str) -> Result<(), Error> {
        self.pipeline(&[Call::Passcode { email, phone, password }])?.pop().unwrap_or_else(no_reply)
    }

    /// Logs this device in with the mailed passcode: stores the new base
    /// token with the device's MAC, and returns it.
    pub fn login(&mut self, email: &str, phone: &str, password: &str, passcode: &str) -> Result<BaseToken, Error> {
        let mac = self.mac.clone().ok_or(Error::NoMac)?;
        field("email", email, true)?;
        field("phone", phone, false)?;
        field("password", password, true)?;
        field("passcode", passcode, true)?;
        let request = Request::Login(LoginRequest { mac: mac.mac(), email, phone, password, passcode });
        let reply = self.exchange(&[Item::Fixed { request, expect: Expect::LoggedIn }])?.pop();
        let Reply::LoggedIn(token) = reply.unwrap_or_else(no_reply)? else {
            return Err(Error::Protocol("the server answered a login with a reply meant for another request".into()));
        };
        self.store.save(&StoredToken { token, mac: Some(mac) }).map_err(Error::TokenStore)?;
        Ok(token)
    }

    /// Makes one request with the stored token: returns once it is
    /// `authorized`, renewing the token on the way if it had expired.
    pub fn request(&mut self, request: &str, data: &[&str]) -> Result<(), Error> {
        self.pipeline(&[Call::Request { request, data }])?.pop().unwrap_or_else(no_reply)
    }

    /// Sends many requests without waiting for each reply (at most the
    /// window in flight), and returns their results in the calls' order.
    /// Every value is checked before anything is sent.
    ///
    /// A refused request does not stop the burst: its result is its error.
    /// What breaks the whole burst is the outer error: a lost connection, a
    /// reply that is no reply, a token store that fails, or a reply after
    /// which the server closes the connection ([`Error::LineTooLong`],
    /// [`Error::TooManyConnections`]).
    pub fn pipeline(&mut self, calls: &[Call<'_>]) -> Result<Vec<Result<(), Error>>, Error> {
        let items = calls.iter().map(|call| self.item(call)).collect::<Result<Vec<_>, _>>()?;
        let outcomes = self.exchange(&items)?;
        Ok(outcomes.into_iter().map(|outcome| outcome.map(drop)).collect())
    }

    /// The token store.
    pub fn store(&self) -> &dyn TokenStore {
        &*self.store
    }

    /// Closes the connection; the next call opens another.
    pub fn close(&mut self) {
        self.connection = None;
    }

    fn open(&self) -> Result<Connection, Error> {
        Connection::open(&self.addr, &self.addrs, self.timeout, self.tls.as_ref())
    }

    /// A call, checked and ready to send.
    fn item<'a>(&self, call: &Call<'a>) -> Result<Item<'a>, Error> {
        match *call {
            Call::Request { request, data } => {
                field("request", request, true)?;
                for item in data {
                    field("data", item, false)?;
                }
                Ok(Item::Token { request, data: join_data(data) })
            }
            Call::Passcode { email, phone, password } => {
                let mac = self.mac.as_ref().ok_or(Error::NoMac)?.mac();
                field("email", email, true)?;
                field("phone", phone, false)?;
                field("password", password, true)?;
                let request = Request::Passcode(PasscodeRequest { mac, password, phone, email });
                Ok(Item::Fixed { request, expect: Expect::PasscodeSent })
            }
        }
    }

    /// Sends `items` and returns their outcomes, on the kept connection or
    /// a new one.
    fn exchange(&mut self, items: &[Item<'_>]) -> Result<Vec<Result<Reply, Error>>, Error> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut own = None;
        if items.iter().any(|item| matches!(item, Item::Token { .. })) {
            let stored = self.store.load().map_err(Error::TokenStore)?.ok_or(Error::NoToken)?;
            let mac = self.mac.clone().or(stored.mac).ok_or(Error::NoMac)?;
            own = Some((stored.token, mac));
        }
        let mut may_resend = true;
        loop {
            let mut connection = match self.connection.take() {
                Some(connection) => connection,
                None => self.open()?,
            };
            let answered = connection.replies;
            match Burst::new(items, own.clone()).run(&mut connection, &*self.store, self.window) {
                Ok(outcomes) => {
                    self.connection = Some(connection);
                    return Ok(outcomes);
                }
                // A connection that answered earlier calls may have been
                // closed by the server since (idle_timeout, a restart). The
                // server reads nothing more from a connection it is
                // closing, so a burst that got no reply on it was not
                // served: send it again, once, on a new connection.
                Err(Error::Closed { .. }) if may_resend && answered > 0 && connection.replies == answered => {
                    may_resend = false;
                }
                // Any other failure leaves the connection out of step with
                // its requests: it is dropped, and the next call opens one.
                Err(e) => return Err(e),
            }
        }
    }
}

/// The host of `host:port`, without an IPv6 address's brackets.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn field(name: &'static str, value: &str, required: bool) -> Result<(), Error> {
    check_field(value, required).map_err(|e| Error::Field { field: name, reason: e.reason() })
}

/// The outcome of a call that got no reply, which a burst never returns.
fn no_reply<T>() -> Result<T, Error> {
    Err(Error::Protocol("no reply to the request".into()))
}

/// A request ready to send.
enum Item<'a> {
    /// Made with the stored token, rendered when sent (the token may be
    /// renewed meanwhile); answered `authorized`.
    Token { request: &'a str, data: Option<String> },
    /// Sent as it is.
    Fixed { request: Request<'a>, expect: Expect },
}

/// The reply that serves a fixed request.
#[derive(Clone, Copy)]
enum Expect {
    PasscodeSent,
    LoggedIn,
}

/// A request on the wire, waiting for its reply.
struct Sent {
    index: usize,
    /// The stored token it carried (none for a fixed request).
    token: Option<BaseToken>,
    /// Whether it is the retry after a renewal.
    retry: bool,
}

/// One pipelined exchange: requests out with at most a window in flight,
/// replies in, renewals stored and their requests sent again.
///
/// Renewal (docs/PROTOCOL.md, "Renewal"): a token request answered
/// `renew|X` was not performed, and X is the token's one successor. Every
/// `renew|` reply of the burst names the same X, so X is stored once;
/// requests not yet sent then go out with X, and each one that got
/// `renew|X` is sent again with X, once, at once (well within the server's
/// renewal grace).
struct Burst<'i, 'a> {
    items: &'i [Item<'a>],
    /// The stored token, renewed as the burst goes, and its MAC.
    own: Option<(BaseToken, DeviceMac)>,
    outcomes: Vec<Option<Result<Reply, Error>>>,
    /// To send: index, and whether it is a retry.
    pending: VecDeque<(usize, bool)>,
    in_flight: VecDeque<Sent>,
    /// The successor each token was renewed to in this burst.
    successors: HashMap<BaseToken, BaseToken>,
}

impl<'i, 'a> Burst<'i, 'a> {
    fn new(items: &'i [Item<'a>], own: Option<(BaseToken, DeviceMac)>) -> Burst<'i, 'a> {
        Burst {
            items,
            own,
            outcomes: items.iter().map(|_| None).collect(),
            pending: (0..items.len()).map(|index| (index, false)).collect(),
            in_flight: VecDeque::new(),
            successors: HashMap::new(),
        }
    }

    fn run(
        mut self,
        connection: &mut Connection,
        store: &dyn TokenStore,
        window: usize,
    ) -> Result<Vec<Result<Reply, Error>>, Error> {
        loop {
            // Top up in batches, not a line per reply.
            if !self.pending.is_empty() && self.in_flight.len() <= window / 2 {
                self.send_more(connection, window)?;
            }
            // Nothing in flight here means nothing pending either.
            let Some(sent) = self.in_flight.pop_front() else { break };
            let reply = match connection.reply() {
                Ok(reply) => Ok(reply),
                // A reply all the same: this request's refusal.
                Err(e @ Error::UnknownCode(_)) => Err(e),
                Err(e) => return Err(e),
            };
            let outcome = match (reply, sent.token) {
                (Ok(Reply::Renew(new)), Some(old)) => {
                    self.renewed(old, new, store)?;
                    if !sent.retry {
                        self.pending.push_back((sent.index, true));
                        continue;
                    }
                    Err(Error::TokenRenewedAgain)
                }
                (reply, _) => self.judge(sent.index, reply),
            };
            match outcome {
                Err(e) if e.closes_the_connection() => return Err(e),
                outcome => self.outcomes[sent.index] = Some(outcome),
            }
        }
        Ok(self.outcomes.into_iter().map(|outcome| outcome.unwrap_or_else(no_reply)).collect())
    }

    /// Sends pending requests until the window is full.
    fn send_more(&mut self, connection: &mut Connection, window: usize) -> Result<(), Error> {
        let mut batch = String::new();
        while self.in_flight.len() < window {
            let Some((index, retry)) = self.pending.pop_front() else { break };
            let token = match (&self.items[index], &self.own) {
                (Item::Fixed { request, .. }, _) => {
                    request.encode_native(&mut batch);
                    None
                }
                (Item::Token { request, data }, Some((token, mac))) => {
                    let request =
                        Request::Token(TokenRequest { token: *token, mac: mac.mac(), request, data: data.as_deref() });
                    request.encode_native(&mut batch);
                    Some(*token)
                }
                // `exchange` loads the token for any token request.
                (Item::Token { .. }, None) => return Err(Error::NoToken),
            };
            self.in_flight.push_back(Sent { index, token, retry });
        }
        // The lines hold tokens and passwords: wiped once sent.
        let batch = Secret::new(batch);
        connection.send(batch.expose().as_bytes())
    }

    /// Stores `new`, the successor of `old`, unless it is stored already.
    fn renewed(&mut self, old: BaseToken, new: BaseToken, store: &dyn TokenStore) -> Result<(), Error> {
        if *self.successors.entry(old).or_insert(new) != new {
            return Err(Error::Protocol("the server renewed one token to two different tokens".into()));
        }
        if let Some((token, mac)) = &mut self.own
            && *token == old
        {
            *token = new;
            store.save(&StoredToken { token: new, mac: Some(mac.clone()) }).map_err(Error::TokenStore)?;
        }
        Ok(())
    }

    /// The outcome of the reply to item `index`: the reply if it serves
    /// the request, else its error.
    fn judge(&self, index: usize, reply: Result<Reply, Error>) -> Result<Reply, Error> {
        let reply = reply?;
        if let Some(refused) = Error::refusal(reply) {
            return Err(refused);
        }
        let serves = match &self.items[index] {
            Item::Token { .. } => matches!(reply, Reply::Authorized),
            Item::Fixed { expect: Expect::PasscodeSent, .. } => matches!(reply, Reply::PasscodeSent),
            Item::Fixed { expect: Expect::LoggedIn, .. } => matches!(reply, Reply::LoggedIn(_)),
        };
        if serves {
            Ok(reply)
        } else {
            Err(Error::Protocol("the server answered with a reply meant for another request".into()))
        }
    }
}
