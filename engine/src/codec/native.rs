//! Native framing: UTF-8 lines ending in LF, a CR before the LF dropped, and
//! a bound on a line's length that also bounds the memory a partial line may
//! hold.

use nom::bytes::streaming::take_till;

/// The next frame in a receive buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Frame<'a> {
    /// A whole line, without its line ending, and how many bytes it took.
    Line {
        /// The line's bytes.
        line: &'a [u8],
        /// Bytes consumed, line ending included.
        consumed: usize,
    },
    /// No line ending yet, and the partial line is within the bound.
    Incomplete,
    /// The line is (or will be) longer than the bound.
    TooLong,
}

/// Finds the first line in `buf`. A line may hold at most `max_line` bytes,
/// not counting its line ending.
pub fn next_frame(buf: &[u8], max_line: usize) -> Frame<'_> {
    let found = take_till::<_, _, nom::error::Error<&[u8]>>(|b| b == b'\n')(buf);
    match found {
        Ok((_, line)) => {
            let consumed = line.len() + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > max_line { Frame::TooLong } else { Frame::Line { line, consumed } }
        }
        // One byte of slack for a CR that may precede the coming LF; any
        // other byte there dooms the line, so say so at once.
        Err(_) if buf.len() > max_line.saturating_add(1) => Frame::TooLong,
        Err(_) if buf.len() == max_line.saturating_add(1) && buf[max_line] != b'\r' => Frame::TooLong,
        Err(_) => Frame::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(next_frame(b"ab\r\ncd", 4), Frame::Line { line: b"ab", consumed: 4 });
        assert_eq!(next_frame(b"\n", 4), Frame::Line { line: b"", consumed: 1 });
        assert_eq!(next_frame(b"abcd", 4), Frame::Incomplete);
        assert_eq!(next_frame(b"abcd\r", 4), Frame::Incomplete);
        assert_eq!(next_frame(b"abcd\r\n", 4), Frame::Line { line: b"abcd", consumed: 6 });
        assert_eq!(next_frame(b"abcde\n", 4), Frame::TooLong);
        assert_eq!(next_frame(b"abcdef", 4), Frame::TooLong);
        assert_eq!(next_frame(b"abcde", 4), Frame::TooLong);
        assert_eq!(next_frame(b"", 4), Frame::Incomplete);
    }
}
