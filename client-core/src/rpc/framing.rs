//! Newline-delimited JSON: one message a line, with a maximum line length so
//! a peer cannot make either side buffer without bound.
//!
//! JSON encoders escape newlines inside strings, so a message never contains
//! a raw `\n`. A line over the limit is skipped to its end and reported as
//! [`FrameError::TooLong`]; the stream stays usable for the next line.

use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The longest request line the server reads (a message text is at most a
/// relay envelope, 64 KiB, so this leaves ample room).
pub const MAX_REQUEST_LINE: usize = 1 << 20;

/// The longest line a caller reads from the server (a long history).
pub const MAX_RESPONSE_LINE: usize = 16 << 20;

/// Why no line could be read.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The line was longer than the limit; it was skipped.
    #[error("a line over the {max}-byte limit was skipped")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads lines of at most `max` bytes. Cancel-safe: a partly read line is
/// kept for the next call, so `next_line` can sit in a `select!`.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    max: usize,
    line: Vec<u8>,
    skipping: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// Lines from `inner`, none longer than `max` bytes.
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            max,
            line: Vec::new(),
            skipping: false,
        }
    }

    /// The next line without its `\n` (and without a `\r` before it), or
    /// `None` at end of stream. An unterminated last line counts as a line.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                if self.skipping {
                    self.skipping = false;
                    return Err(FrameError::TooLong { max: self.max });
                }
                if self.line.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(self.take_line()));
            }
            let (chunk, ends_line) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (available.len(), false),
            };
            if !self.skipping {
                if self.line.len() + chunk > self.max {
                    self.skipping = true;
                    self.line = Vec::new();
                } else {
                    self.line.extend_from_slice(&available[..chunk]);
                }
            }
            self.inner.consume(chunk + usize::from(ends_line));
            if ends_line {
                if self.skipping {
                    self.skipping = false;
                    return Err(FrameError::TooLong { max: self.max });
                }
                return Ok(Some(self.take_line()));
            }
        }
    }

    fn take_line(&mut self) -> Vec<u8> {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        line
    }
}

/// `msg` as one line, newline included.
pub fn encode_line<T: Serialize>(msg: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::BufReader;

    fn read_all(input: &[u8], max: usize, buf: usize) -> Vec<Result<Vec<u8>, usize>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut r = LineReader::new(BufReader::with_capacity(buf, input), max);
            let mut out = Vec::new();
            loop {
                match r.next_line().await {
                    Ok(Some(l)) => out.push(Ok(l)),
                    Ok(None) => return out,
                    Err(FrameError::TooLong { max }) => out.push(Err(max)),
                    Err(e) => panic!("{e}"),
                }
            }
        })
    }

    proptest! {
        #[test]
        fn lines_round_trip_whatever_the_buffer_size(
            texts in prop::collection::vec(".{0,40}", 0..8),
            buf in 1usize..64,
        ) {
            let mut input = Vec::new();
            for t in &texts {
                input.extend(encode_line(t).unwrap());
            }
            let lines = read_all(&input, 1024, buf);
            prop_assert_eq!(lines.len(), texts.len());
            for (line, text) in lines.into_iter().zip(&texts) {
                let back: String = serde_json::from_slice(&line.unwrap()).unwrap();
                prop_assert_eq!(&back, text);
            }
        }

        #[test]
        fn an_oversize_line_is_refused_and_the_next_one_read(
            big in 17usize..200,
            buf in 1usize..32,
        ) {
            let mut input = vec![b'x'; big];
            input.extend(b"\n{\"ok\":1}\n");
            let lines = read_all(&input, 16, buf);
            prop_assert_eq!(lines, vec![Err(16), Ok(b"{\"ok\":1}".to_vec())]);
        }
    }

    #[test]
    fn crlf_blank_and_unterminated_lines() {
        let lines = read_all(b"a\r\n\nb", 8, 4);
        assert_eq!(
            lines,
            vec![Ok(b"a".to_vec()), Ok(vec![]), Ok(b"b".to_vec())]
        );
        assert_eq!(read_all(b"123456789", 8, 4), vec![Err(8)]);
        assert_eq!(
            read_all(b"12345678\n", 8, 3),
            vec![Ok(b"12345678".to_vec())]
        );
    }
}
