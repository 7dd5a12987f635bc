//! The PROXY protocol header decoder (`codec::proxy`) on any bytes.

use std::net::{IpAddr, SocketAddr};

use crate::codec::proxy::{Decoded, MAX_HEADER, ProxyHeader, V2_SIGNATURE, decode};

/// Checks `decode` on `data` (never a panic; a header takes no more bytes
/// than there are, nor than [`MAX_HEADER`]; every prefix of a header is
/// incomplete and the header decodes the same without what follows it;
/// "incomplete" only below the bound), and that headers rendered from the
/// first bytes, in both versions, decode to their address.
pub fn proxy_header(data: &[u8]) {
    match decode(data) {
        Decoded::Header(header, consumed) => {
            assert!(consumed <= data.len() && consumed <= MAX_HEADER, "{consumed} of {}", data.len());
            assert_eq!(decode(&data[..consumed]), Decoded::Header(header, consumed));
            for n in 0..consumed {
                assert_eq!(decode(&data[..n]), Decoded::Incomplete, "a prefix of {n} bytes");
            }
        }
        Decoded::Incomplete => assert!(data.len() < MAX_HEADER, "{} bytes and still incomplete", data.len()),
        Decoded::Invalid(_) => {}
    }

    // A rendered header of the address in the first bytes decodes to it.
    let Some(bytes) = data.get(..18) else { return };
    let port = u16::from_be_bytes([bytes[16], bytes[17]]);
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&bytes[..16]);
    let v6 = IpAddr::from(octets);
    let v4 = IpAddr::from([octets[0], octets[1], octets[2], octets[3]]);
    for ip in [v4, v6] {
        let source = SocketAddr::new(ip, port);
        let family = if ip.is_ipv4() { "TCP4" } else { "TCP6" };
        let line = format!("PROXY {family} {ip} {ip} {port} 7160\r\n");
        assert_eq!(decode(line.as_bytes()), Decoded::Header(ProxyHeader::Proxied(source), line.len()));
        let mut binary = V2_SIGNATURE.to_vec();
        let addresses: Vec<u8> = match ip {
            IpAddr::V4(a) => [a.octets().as_slice(), &a.octets(), &port.to_be_bytes(), &[0, 0]].concat(),
            IpAddr::V6(a) => [a.octets().as_slice(), &a.octets(), &port.to_be_bytes(), &[0, 0]].concat(),
        };
        binary.extend_from_slice(&[0x21, if ip.is_ipv4() { 0x11 } else { 0x21 }]);
        binary.extend_from_slice(&u16::try_from(addresses.len()).unwrap_or(0).to_be_bytes());
        binary.extend_from_slice(&addresses);
        assert_eq!(decode(&binary), Decoded::Header(ProxyHeader::Proxied(source), binary.len()));
    }
}
