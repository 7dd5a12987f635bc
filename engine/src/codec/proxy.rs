//! The PROXY protocol header (HAProxy's, versions 1 and 2): what a TCP
//! load balancer in front of the servers sends first on each connection,
//! so that the server learns the client's address rather than the
//! balancer's (docs/PROTOCOL.md, "Behind a load balancer").
//!
//! Only a connection from an address in `proxy_protocol_from` may carry
//! one; deciding that is the connection's business. This module only
//! decodes bytes, totally: any input is a header, a need for more bytes,
//! or a reason to close, never a panic, and never more than
//! [`MAX_HEADER`] bytes looked at.
//!
//! - Version 1 is one text line: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n`,
//!   or `PROXY UNKNOWN …\r\n`, at most 107 bytes.
//! - Version 2 is binary: a 12-byte signature, a version and command byte,
//!   a family and transport byte, a 16-bit length, the addresses, and
//!   optional TLVs, which are skipped.
//!
//! A `LOCAL` command (v2) or `UNKNOWN` family (v1) is the balancer
//! speaking for itself, a health check: the connection keeps the
//! balancer's own address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest version 1 line, `\r\n` included (the protocol's bound).
pub const MAX_V1: usize = 107;

/// The most bytes a header may take (a version 2 header with its TLVs).
/// Balancers send far less; a longer one is refused, not buffered.
pub const MAX_HEADER: usize = 16 + 1024;

/// What a header says.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProxyHeader {
    /// The client the balancer relays: its address and port.
    Proxied(SocketAddr),
    /// The balancer speaks for itself (a health check): the connection's
    /// own address stands.
    Local,
}

/// An address block (`203.0.113.0/24`, `2001:db8::/32`, or one address)
/// whose connections may carry a header: `proxy_protocol_from`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Cidr {
    /// The block's first address (the bits past the prefix are zero).
    pub addr: IpAddr,
    /// The prefix length, at most 32 (IPv4) or 128 (IPv6).
    pub prefix: u8,
}

impl Cidr {
    /// Parses `ADDRESS[/PREFIX]`; a lone address is a block of one.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) if !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit()) => {
                (addr.parse::<IpAddr>().ok()?, prefix.parse::<u8>().ok()?)
            }
            Some(_) => return None,
            None => {
                let addr = text.trim().parse::<IpAddr>().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= bits).then(|| Cidr { addr: Cidr::mask(addr, prefix), prefix })
    }

    /// Whether `ip` is in the block (an IPv4 address mapped into IPv6 is
    /// taken as the IPv4 address it is).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && Cidr::mask(ip, self.prefix) == self.addr
    }

    fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & keep))
            }
            IpAddr::V6(a) => {
                let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & keep))
            }
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What the bytes so far make.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Decoded {
    /// A whole header, and how many bytes it took (what follows is the
    /// protocol's).
    Header(ProxyHeader, usize),
    /// A header so far: more bytes are needed.
    Incomplete,
    /// Not a header, or a malformed one: close the connection.
    Invalid(&'static str),
}

/// Decodes the header at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Decoded {
    match bytes.first() {
        None => Decoded::Incomplete,
        Some(b'P') => v1(bytes),
        Some(b'\r') => v2(bytes),
        Some(_) => Decoded::Invalid("no PROXY protocol header"),
    }
}

fn v1(bytes: &[u8]) -> Decoded {
    const PREFIX: &[u8] = b"PROXY ";
    let seen = &bytes[..bytes.len().min(MAX_V1)];
    let prefix = &PREFIX[..seen.len().min(PREFIX.len())];
    if !seen.starts_with(prefix) {
        return Decoded::Invalid("no PROXY protocol header");
    }
    let Some(end) = seen.windows(2).position(|w| w == b"\r\n") else {
        return if bytes.len() >= MAX_V1 { Decoded::Invalid("PROXY v1 line too long") } else { Decoded::Incomplete };
    };
    let Ok(line) = std::str::from_utf8(&seen[PREFIX.len().min(end)..end]) else {
        return Decoded::Invalid("PROXY v1 line is not text");
    };
    let consumed = end + 2;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["UNKNOWN", ..] => Decoded::Header(ProxyHeader::Local, consumed),
        [family @ ("TCP4" | "TCP6"), source, _destination, source_port, _destination_port] => {
            let ip = match (*family, source.parse::<IpAddr>()) {
                (_, Err(_)) => return Decoded::Invalid("PROXY v1 source is not an address"),
                ("TCP4", Ok(ip @ IpAddr::V4(_))) | ("TCP6", Ok(ip @ IpAddr::V6(_))) => ip,
                _ => return Decoded::Invalid("PROXY v1 source is not of its family"),
            };
            // Ports are decimal, no sign, no leading zero (the protocol's
            // words): `u16::from_str` alone would take "+80" and "080".
            let port_ok =
                |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0'));
            match source_port.parse::<u16>() {
                Ok(port) if port_ok(source_port) => {
                    Decoded::Header(ProxyHeader::Proxied(SocketAddr::new(ip, port)), consumed)
                }
                _ => Decoded::Invalid("PROXY v1 source port is not a port"),
            }
        }
        _ => Decoded::Invalid("PROXY v1 line is malformed"),
    }
}

fn v2(bytes: &[u8]) -> Decoded {
    let seen = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..seen] != V2_SIGNATURE[..seen] {
        return Decoded::Invalid("no PROXY protocol header");
    }
    let Some(&[version_command, family, high, low]) = bytes.get(12..16).and_then(|b| <&[u8; 4]>::try_from(b).ok())
    else {
        return Decoded::Incomplete;
    };
    if version_command >> 4 != 2 {
        return Decoded::Invalid("PROXY v2 header of another version");
    }
    let length = usize::from(u16::from_be_bytes([high, low]));
    let total = 16 + length;
    if total > MAX_HEADER {
        return Decoded::Invalid("PROXY v2 header too long");
    }
    let Some(body) = bytes.get(16..total) else { return Decoded::Incomplete };
    match version_command & 0x0f {
        // LOCAL: the balancer itself; whatever it carries is ignored.
        0 => Decoded::Header(ProxyHeader::Local, total),
        1 => match family {
            // TCP over IPv4: source, destination, source port, destination port.
            0x11 if body.len() >= 12 => {
                let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
                let port = u16::from_be_bytes([body[8], body[9]]);
                Decoded::Header(ProxyHeader::Proxied(SocketAddr::new(IpAddr::V4(ip), port)), total)
            }
            0x21 if body.len() >= 36 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[..16]);
                let port = u16::from_be_bytes([body[32], body[33]]);
                Decoded::Header(ProxyHeader::Proxied(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port)), total)
            }
            0x11 | 0x21 => Decoded::Invalid("PROXY v2 addresses cut short"),
            // UNSPEC: relayed, but no address to take.
            0x00 => Decoded::Header(ProxyHeader::Local, total),
            _ => Decoded::Invalid("PROXY v2 family is not TCP over IPv4 or IPv6"),
        },
        _ => Decoded::Invalid("PROXY v2 command is neither LOCAL nor PROXY"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxied(text: &str, consumed: usize) -> Decoded {
        Decoded::Header(ProxyHeader::Proxied(text.parse().unwrap()), consumed)
    }

    fn v2_header(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn blocks_hold_their_addresses_only() {
        let block = Cidr::parse("203.0.113.77/24").unwrap();
        assert_eq!(block.to_string(), "203.0.113.0/24");
        assert!(block.contains("203.0.113.1".parse().unwrap()));
        assert!(block.contains("::ffff:203.0.113.9".parse().unwrap()));
        assert!(!block.contains("203.0.114.1".parse().unwrap()));
        assert!(!block.contains("2001:db8::1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
        let six = Cidr::parse("2001:db8::/32").unwrap();
        assert!(six.contains("2001:db8:ffff::1".parse().unwrap()) && !six.contains("2001:db9::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("198.51.100.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/+8", "nothing", "10.0.0.0/8/8", ""] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn version_one_lines() {
        let line = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 7160\r\nrest";
        assert_eq!(decode(line), proxied("203.0.113.7:51234", line.len() - 4));
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 443 7160\r\n";
        assert_eq!(decode(line), proxied("[2001:db8::7]:443", line.len()));
        assert_eq!(decode(b"PROXY UNKNOWN\r\n"), Decoded::Header(ProxyHeader::Local, 15));
        // Every prefix of a header is incomplete, not invalid.
        for n in 0..line.len() {
            assert_eq!(decode(&line[..n]), Decoded::Incomplete, "{n}");
        }
        for bad in [
            &b"PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXX TCP4",
            b"GET / HTTP/1.1\r\n",
            b"abcdef0123|aa:bb:cc:dd:ee:ff|get\n",
        ] {
            assert!(matches!(decode(bad), Decoded::Invalid(_)), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(decode(&long), Decoded::Invalid("PROXY v1 line too long"));
    }

    #[test]
    fn version_two_headers() {
        let mut body = vec![203, 0, 113, 7, 192, 0, 2, 1];
        body.extend_from_slice(&51234u16.to_be_bytes());
        body.extend_from_slice(&7160u16.to_be_bytes());
        let header = v2_header(1, 0x11, &body);
        assert_eq!(decode(&header), proxied("203.0.113.7:51234", 28));
        for n in 0..header.len() {
            assert_eq!(decode(&header[..n]), Decoded::Incomplete, "{n}");
        }
        // TLVs after the addresses are skipped.
        let with_tlv = v2_header(1, 0x11, &[body.as_slice(), &[0x04, 0x00, 0x02, 0xab, 0xcd]].concat());
        assert_eq!(decode(&[with_tlv.as_slice(), b"next"].concat()), proxied("203.0.113.7:51234", 33));
        let mut six = [0u8; 36];
        six[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        six[32..34].copy_from_slice(&443u16.to_be_bytes());
        assert_eq!(decode(&v2_header(1, 0x21, &six)), proxied("[2001:db8::7]:443", 52));
        assert_eq!(decode(&v2_header(0, 0x00, &[])), Decoded::Header(ProxyHeader::Local, 16));
        assert_eq!(decode(&v2_header(1, 0x11, &body[..8])), Decoded::Invalid("PROXY v2 addresses cut short"));
        assert!(matches!(decode(&v2_header(1, 0x12, &body)), Decoded::Invalid(_)), "UDP");
        assert!(matches!(decode(&v2_header(2, 0x11, &body)), Decoded::Invalid(_)), "command 2");
        let mut v3 = header.clone();
        v3[12] = 0x31;
        assert!(matches!(decode(&v3), Decoded::Invalid(_)));
        let mut huge = v2_header(1, 0x11, &body);
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(decode(&huge), Decoded::Invalid("PROXY v2 header too long"));
        assert!(matches!(decode(b"\r\n\r\n\0\r\nQUIX\n"), Decoded::Invalid(_)));
    }
}
