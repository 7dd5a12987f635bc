//! Legacy framing. The old clients connect, write one request with no
//! terminator, read once and expect the server to close. The old server read
//! the request with a single `recv(1024)`. So a legacy request is the first
//! 1024 bytes received; when they do not yet hold a whole request (five
//! fields), the engine waits a short, bounded time for the rest.

/// The most a legacy request may hold, as the old server's `recv(1024)`.
pub const MAX_REQUEST: usize = 1024;

/// Separators in a whole request (`a|b|c|d|e`).
const SEPARATORS: usize = 4;

/// Whether the bytes received so far hold a whole request.
pub fn is_whole(buf: &[u8]) -> bool {
    buf.len() >= MAX_REQUEST || buf.iter().filter(|&&b| b == b'|').count() >= SEPARATORS
}

/// The request in the received bytes: at most [`MAX_REQUEST`] bytes, with a
/// trailing line ending (which some clients add) removed.
pub fn request(buf: &[u8]) -> &[u8] {
    let buf = &buf[..buf.len().min(MAX_REQUEST)];
    let buf = buf.strip_suffix(b"\n").unwrap_or(buf);
    buf.strip_suffix(b"\r").unwrap_or(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_requests() {
        assert!(!is_whole(b"aa:bb|a@b|1|"));
        assert!(is_whole(b"aa:bb|a@b|1|pw|"));
        assert!(is_whole(&[b'x'; 1024]));
        assert_eq!(request(b"a|b|c|d|e\r\n"), b"a|b|c|d|e");
        assert_eq!(request(&[b'x'; 2000]).len(), 1024);
    }
}
