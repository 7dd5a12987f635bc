//! A device's side of tokenizer-auth's native protocol: blocking, small,
//! over plaintext TCP or TLS.
//!
//! # The model
//!
//! A user proves who they are once per device: [`Client::request_passcode`]
//! with the account's email, phone and password makes the server mail a
//! one-time passcode, and [`Client::login`] with the same credentials and
//! that passcode gets a session token, bound to the device's MAC address
//! and to its IP address as the server sees it. The client keeps the token
//! (with the MAC) in a [`TokenStore`], and every later
//! [`Client::request`] carries it: the server answers whether the token is
//! good, and the request itself (a name and data fields) is the device's
//! own business.
//!
//! ```no_run
//! use tokenizer_auth_client::{Client, DeviceMac, FileTokenStore, Options};
//!
//! # fn main() -> Result<(), tokenizer_auth_client::Error> {
//! # let (password, passcode) = ("correct horse", "K7QX2M");
//! let options = Options {
//!     tls: true,
//!     mac: Some(DeviceMac::parse("aa:bb:cc:dd:ee:ff")?),
//!     store: Box::new(FileTokenStore::new("/var/lib/device/auth-token")),
//!     ..Options::default()
//! };
//! let mut client = Client::connect("auth.example.com:7160", options)?;
//! client.request_passcode("ada@example.com", "555-0100", password)?; // the server mails a passcode
//! client.login("ada@example.com", "555-0100", password, passcode)?; // the token goes into the file
//! client.request("status", &[])?; // Ok once authorized
//! # Ok(())
//! # }
//! ```
//!
//! # Renewal
//!
//! A token lives `token_ttl` (an hour by default). A request with an
//! expired token is answered `renew|X` and not performed: X is the token's
//! one successor. The client stores X and sends the request again with it,
//! once, at once, so a caller never sees the renewal. In a pipelined burst
//! every `renew|` reply names the same X (`docs/PROTOCOL.md`, "Renewal"),
//! so X is stored once, and requests of the burst not yet sent by then go
//! out with X directly. Within the server's renewal grace (10 s by default)
//! the old token still learns X; after it, the old token is taken for a
//! stolen one and the whole session is revoked: so a retry is never put
//! off. If a retry is told to renew again (a lifetime shorter than a round
//! trip) the newest token is stored and the call fails with
//! [`Error::TokenRenewedAgain`], which is retryable; two different
//! successors for one token are [`Error::Protocol`].
//!
//! # Pipelining and the connection
//!
//! [`Client::pipeline`] sends many requests without waiting for each reply
//! and reads the replies in order, at most [`Options::window`] (default
//! [`DEFAULT_WINDOW`]) in flight, so a long burst never leaves more
//! replies unread than the server holds for a client. A client keeps one
//! connection between calls. If the server closed it while it sat idle
//! (`idle_timeout`, a restart), the next call is sent again, once, on a new
//! one: the server reads nothing more from a connection it is closing, so
//! requests that got no reply on it were not served. Every connect, send
//! and read has [`Options::timeout`], and a reply line is read up to
//! [`MAX_REPLY`] bytes and no further.
//!
//! # TLS
//!
//! [`Options::tls`] speaks TLS (rustls), trusting the system's roots;
//! [`Options::ca`] also trusts the certificates in a PEM file, and implies
//! TLS. The certificate must name [`Options::server_name`], by default the
//! host of the address. The handshake happens in [`Client::connect`], so a
//! certificate that is refused is refused before any request is sent
//! ([`Error::Tls`]).
//!
//! # The token store
//!
//! [`FileTokenStore`] keeps the token in a file of mode 0600,
//! `<token> <MAC>\n`, replaced whole on every save: the same file
//! `tokenizer-auth client` and the Python package (`clients/python`) read
//! and write, so they can share it. [`MemoryTokenStore`] is the default;
//! anything that implements [`TokenStore`] will do.
//!
//! # Errors and secrets
//!
//! Every refusal of the protocol is its own [`Error`] variant (`False` is
//! [`Error::CredentialsRejected`], `unauthorized` [`Error::Unauthorized`],
//! each `error|<code>` the variant of its code), and so is each failure on
//! this side; [`Error::is_retryable`] says whether trying again later may
//! work. A refused request of a burst does not stop the burst.
//!
//! Requests are rendered and replies parsed by the engine's codec
//! (`tokenizer_auth_engine::codec`), the server's own: no protocol text is
//! written here. Passwords, passcodes and tokens never appear in an error
//! message or in `Debug` output, and request lines are wiped from memory
//! once sent.

mod client;
mod connection;
mod error;
mod mac;
mod store;

pub use client::{Call, Client, DEFAULT_WINDOW, Options};
pub use connection::MAX_REPLY;
pub use error::Error;
pub use mac::DeviceMac;
pub use store::{FileTokenStore, MemoryTokenStore, StoredToken, TokenStore};
pub use tokenizer_auth_engine::BaseToken;
