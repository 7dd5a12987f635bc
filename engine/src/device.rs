//! The device a session is bound to: its MAC address (asserted by the
//! client) and its IP address (learnt from the socket). Both are normalized
//! before they are hashed, so one device always yields one master token.

use core::fmt;
use std::net::IpAddr;

/// A MAC address, always shown as lowercase `aa:bb:cc:dd:ee:ff`.
///
/// Accepted spellings: six pairs of hex digits separated by `:` or by `-`
/// (one separator throughout), in either case, or twelve bare hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac([u8; 6]);

impl Mac {
    /// Parses and normalizes a MAC address; `None` for anything else.
    pub fn parse(text: &str) -> Option<Mac> {
        let bytes = text.as_bytes();
        let digits: [u8; 12] = match bytes.len() {
            12 => bytes.try_into().ok()?,
            17 => {
                let sep = bytes[2];
                if sep != b':' && sep != b'-' {
                    return None;
                }
                let mut digits = [0u8; 12];
                for (i, chunk) in bytes.chunks(3).enumerate() {
                    if chunk.len() == 3 && chunk[2] != sep {
                        return None;
                    }
                    digits[2 * i] = chunk[0];
                    digits[2 * i + 1] = chunk[1];
                }
                digits
            }
            _ => return None,
        };
        let mut mac = [0u8; 6];
        for (octet, pair) in mac.iter_mut().zip(digits.chunks_exact(2)) {
            *octet = (crate::hex::digit(pair[0])? << 4) | crate::hex::digit(pair[1])?;
        }
        Some(Mac(mac))
    }

    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Builds a MAC from its octets.
    pub fn from_octets(octets: [u8; 6]) -> Mac {
        Mac(octets)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Normalizes a peer address: an IPv4-mapped IPv6 address becomes IPv4, so a
/// dual-stack listener and an IPv4 listener see the same client alike.
pub fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_spellings_normalize_to_one_form() {
        let want = "aa:bb:cc:0d:ee:ff";
        for text in ["aa:bb:cc:0d:ee:ff", "AA:BB:CC:0D:EE:FF", "aa-bb-cc-0d-ee-ff", "AABBCC0DEEFF"] {
            assert_eq!(Mac::parse(text).unwrap().to_string(), want, "{text}");
        }
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb-cc:dd:ee:ff",
            "gg:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:ff:00",
            "+a:bb:cc:dd:ee:ff",
            "aabbccddeef ",
        ] {
            assert!(Mac::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn mapped_ipv6_becomes_ipv4() {
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(normalize_ip(mapped), "127.0.0.1".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(normalize_ip(v6), v6);
    }
}
