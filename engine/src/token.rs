//! Session tokens. The client holds the [`BaseToken`]; the store holds only
//! the [`MasterToken`], a hash binding the base token to the device's MAC and
//! IP. The derivation is fixed by rows the old server wrote:
//! `master = sha256hex(sha256hex(MAC) + base + sha256hex(IP))`.

use core::fmt;
use std::net::IpAddr;

use hmac::Mac as _;
use sha2::{Digest, Sha256};

use crate::device::Mac;
use crate::hex;
use crate::server_key::ServerKey;

/// The token a client carries: 32 bytes, shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BaseToken([u8; 32]);

/// What the store keeps of a session token: 32 bytes, stored as 64 hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MasterToken([u8; 32]);

impl BaseToken {
    /// A new base token: SHA-256 over the device, the email and 256 bits of
    /// salt from the RNG. Only the salt makes it unguessable; the rest ties it
    /// to the login it was issued for.
    pub(crate) fn derive(mac: Mac, ip: IpAddr, email: &str, salt: &[u8; 32]) -> BaseToken {
        let mut h = Sha256::new();
        h.update(mac.to_string().as_bytes());
        h.update(b"|");
        h.update(ip.to_string().as_bytes());
        h.update(b"|");
        h.update(email.as_bytes());
        h.update(b"|");
        h.update(salt);
        BaseToken(h.finalize().into())
    }

    /// Parses 64 hex digits (either case).
    pub fn parse(text: &[u8]) -> Option<BaseToken> {
        hex::decode32(text).map(BaseToken)
    }

    /// The 64 lowercase hex digits a client sees.
    pub fn to_hex(&self) -> [u8; 64] {
        hex::encode32(&self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A base token from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> BaseToken {
        BaseToken(bytes)
    }

    /// HMAC-SHA-256 under the server key of `label` and this token.
    pub(crate) fn keyed(&self, key: &ServerKey, label: &[u8]) -> [u8; 32] {
        key.mac().chain_update(label).chain_update(self.0).finalize().into_bytes().into()
    }
}

/// The label of the tag derivation: a different input to the key than the
/// successor's (`renewal`) and the passcode digests'.
const TAG_LABEL: &[u8] = b"tokenizer-auth rotated token tag\0";

/// A keyed digest of a base token alone, without its binding: what a token
/// rotated away is found by (see `renewal`), whatever binding presents it.
/// 32 bytes, stored as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenTag([u8; 32]);

impl TokenTag {
    /// The tag of `token` under `key`.
    pub fn of(key: &ServerKey, token: &BaseToken) -> TokenTag {
        TokenTag(token.keyed(key, TAG_LABEL))
    }

    /// A tag from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> TokenTag {
        TokenTag(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits the store keeps.
    pub fn to_hex(&self) -> String {
        hex::encode32(&self.0).iter().map(|&b| char::from(b)).collect()
    }

    /// Parses the stored hex form.
    pub fn parse(text: &str) -> Option<TokenTag> {
        hex::decode32(text.as_bytes()).map(TokenTag)
    }
}

impl fmt::Debug for TokenTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = hex::encode32(&self.0);
        write!(f, "TokenTag({}…)", core::str::from_utf8(&hex[..12]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Display for BaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        f.write_str(core::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

/// A base token is a credential: debug output never shows it.
impl fmt::Debug for BaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BaseToken([redacted])")
    }
}

fn sha256_hex(data: &[u8]) -> [u8; 64] {
    hex::encode32(&Sha256::digest(data).into())
}

fn mac_digest(mac: Mac) -> [u8; 64] {
    let mut mac_text = [0u8; 17];
    write_mac(&mut mac_text, mac);
    sha256_hex(&mac_text)
}

fn ip_digest(ip: IpAddr) -> [u8; 64] {
    let mut ip_text = IpText::new();
    ip_text.write(ip);
    sha256_hex(ip_text.as_bytes())
}

fn combine(mac_hex: &[u8; 64], base: &BaseToken, ip_hex: &[u8; 64]) -> MasterToken {
    let mut h = Sha256::new();
    h.update(mac_hex);
    h.update(base.to_hex());
    h.update(ip_hex);
    MasterToken(h.finalize().into())
}

impl MasterToken {
    /// Derives the master token the store knows a session by.
    pub fn derive(base: &BaseToken, mac: Mac, ip: IpAddr) -> MasterToken {
        combine(&mac_digest(mac), base, &ip_digest(ip))
    }

    /// The 64 lowercase hex digits the `token` column holds.
    pub fn to_hex(&self) -> String {
        let hex = hex::encode32(&self.0);
        hex.iter().map(|&b| char::from(b)).collect()
    }

    /// Parses the stored hex form.
    pub fn parse(text: &str) -> Option<MasterToken> {
        hex::decode32(text.as_bytes()).map(MasterToken)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A master token from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> MasterToken {
        MasterToken(bytes)
    }
}

impl fmt::Debug for MasterToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = hex::encode32(&self.0);
        write!(f, "MasterToken({}…)", core::str::from_utf8(&hex[..12]).map_err(|_| fmt::Error)?)
    }
}

/// A connection's peer digests: its IP, and the inner digests of the master
/// tokens derived for it (the IP's and the last MAC's), kept between its
/// requests: its IP's never changes, and a client mostly asks for one
/// device. Two of the six SHA-256 blocks of a
/// token check, and the IP's text, are then done once per connection
/// instead of once per request. Computed on first use: a connection that
/// never asks about a token (a legacy login, say) pays nothing.
#[derive(Clone, Debug)]
pub(crate) struct PeerDigests {
    ip: IpAddr,
    ip_hex: Option<[u8; 64]>,
    last_mac: Option<(Mac, [u8; 64])>,
}

impl PeerDigests {
    pub(crate) fn new(ip: IpAddr) -> PeerDigests {
        PeerDigests { ip, ip_hex: None, last_mac: None }
    }

    /// [`MasterToken::derive`] for this peer, byte for byte.
    pub(crate) fn master(&mut self, base: &BaseToken, mac: Mac) -> MasterToken {
        let mac_hex = match self.last_mac {
            Some((last, digest)) if last == mac => digest,
            _ => {
                let digest = mac_digest(mac);
                self.last_mac = Some((mac, digest));
                digest
            }
        };
        let ip = self.ip;
        let ip_hex = self.ip_hex.get_or_insert_with(|| ip_digest(ip));
        combine(&mac_hex, base, ip_hex)
    }

    pub(crate) fn ip(&self) -> IpAddr {
        self.ip
    }
}

/// Writes a MAC's normalized text without allocating (this is the hot path
/// of every token check).
fn write_mac(out: &mut [u8; 17], mac: Mac) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in mac.octets().iter().enumerate() {
        out[3 * i] = DIGITS[usize::from(b >> 4)];
        out[3 * i + 1] = DIGITS[usize::from(b & 0x0f)];
        if i < 5 {
            out[3 * i + 2] = b':';
        }
    }
}

/// A stack buffer holding an IP address's text (at most 39 bytes for IPv6).
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn new() -> Self {
        IpText { buf: [0; 48], len: 0 }
    }

    fn write(&mut self, ip: IpAddr) {
        self.len = 0;
        match ip {
            // The common case, without the formatting machinery.
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b'.');
                    }
                    if octet >= 100 {
                        self.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        self.push(b'0' + octet / 10 % 10);
                    }
                    self.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(_) => {
                use core::fmt::Write as _;
                // Cannot fail: the longest IPv6 text is 45 bytes.
                let _ = write!(self, "{ip}");
            }
        }
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl core::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_token_matches_the_old_servers_formula() {
        // Computed with Python: hashlib.sha256((sha256(mac) + base + sha256(ip)).encode()).hexdigest()
        let base = BaseToken::parse(b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff").unwrap();
        let mac = Mac::parse("aa:bb:cc:dd:ee:ff").unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let master = MasterToken::derive(&base, mac, ip);
        assert_eq!(master.to_hex(), PYTHON_MASTER);
        assert_eq!(MasterToken::parse(&master.to_hex()), Some(master));
    }

    #[test]
    fn a_connections_kept_digests_derive_what_derive_does() {
        let base = BaseToken([9; 32]);
        let macs = ["aa:bb:cc:dd:ee:ff", "00:11:22:33:44:55"].map(|m| Mac::parse(m).unwrap());
        for ip in ["127.0.0.1", "10.1.2.3", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut peer = PeerDigests::new(ip);
            // Same MAC twice, another, back again: the kept digest is only
            // ever the current MAC's.
            for mac in [macs[0], macs[0], macs[1], macs[0]] {
                assert_eq!(peer.master(&base, mac), MasterToken::derive(&base, mac, ip));
            }
        }
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.255.9", "255.255.255.255", "::1", "2001:db8::ff00:42:8329"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut text = IpText::new();
            text.write(ip);
            assert_eq!(text.as_bytes(), ip.to_string().as_bytes());
        }
    }

    const PYTHON_MASTER: &str = "d2f6955322d7f00b74ee9b17f9ef095a45b2876a0cbc2b85355555844c269288";

    #[test]
    fn base_token_never_prints() {
        let base = BaseToken([7; 32]);
        assert_eq!(format!("{base:?}"), "BaseToken([redacted])");
        assert_eq!(base.to_string().len(), 64);
    }
}
