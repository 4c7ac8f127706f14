//! Message boundaries in a read buffer, found without parsing bodies.
//!
//! Every tagged message is `tag: u8, len: i32 (includes itself), body`. The
//! relay reads bytes into one `BytesMut` per socket and asks a [`Scanner`]
//! how many bytes at the front are ready to forward. Only the messages a
//! caller asks to see whole (ReadyForQuery, Parse, ...) are held until they
//! are complete; all others are forwarded as their bytes arrive, so a 1 GB
//! DataRow or CopyData needs no 1 GB buffer.

/// What to do with a message that has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Forward it and keep scanning.
    Forward,
    /// Forward it, then stop scanning: the caller acts on what it saw.
    ForwardThenStop,
    /// Do not forward it; stop scanning before it. The message stays at the
    /// front of the unscanned bytes for the caller to take.
    Hold,
}

/// A message longer than the configured maximum, or with a length below 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadLength {
    pub tag: u8,
    pub len: i64,
}

/// The per-direction scanning state over a buffer that the caller owns.
///
/// Invariant: `ready <= buf.len()`; bytes `buf[..ready]` are whole messages
/// or the start of a streamed one, all already shown to the visitor.
#[derive(Debug, Default)]
pub struct Scanner {
    ready: usize,
    /// Body bytes of the current streamed message that have not arrived yet.
    streaming: usize,
    stopped: bool,
}

/// The visitor a [`Scanner`] reports messages to.
pub trait Visit {
    /// Whether a message with this tag must be held until complete and shown
    /// with its body. Otherwise it is shown at its header with an empty body
    /// and streamed.
    fn wants_body(&self, tag: u8) -> bool;
    fn visit(&mut self, tag: u8, body: &[u8]) -> Step;
}

/// Reads a message header: tag and the length field, if five bytes are there.
pub fn header(buf: &[u8]) -> Option<(u8, i32)> {
    if buf.len() < 5 {
        return None;
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    Some((buf[0], len))
}

impl Scanner {
    /// Bytes at the front of the buffer ready to be forwarded.
    pub fn ready(&self) -> usize {
        self.ready
    }

    /// Whether the visitor asked to stop (see [`Step`]); cleared by [`Scanner::resume`].
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    pub fn resume(&mut self) {
        self.stopped = false;
    }

    /// Whether the scanner is between messages (nothing streamed half-way).
    pub fn at_boundary(&self) -> bool {
        self.streaming == 0
    }

    /// The caller removed `n` bytes from the front of the buffer (sent them).
    pub fn consumed(&mut self, n: usize) {
        debug_assert!(n <= self.ready);
        self.ready -= n;
    }

    /// Scans new bytes. Returns how many more bytes the buffer must hold for
    /// a held message to complete (0 when nothing is waiting on a body).
    pub fn scan(
        &mut self,
        buf: &[u8],
        max_len: usize,
        visitor: &mut impl Visit,
    ) -> Result<usize, BadLength> {
        while !self.stopped {
            if self.streaming > 0 {
                let take = self.streaming.min(buf.len() - self.ready);
                self.ready += take;
                self.streaming -= take;
                if self.streaming > 0 {
                    return Ok(0);
                }
            }
            let rest = &buf[self.ready..];
            let Some((tag, len)) = header(rest) else {
                return Ok(0);
            };
            if len < 4 || len as usize > max_len {
                return Err(BadLength {
                    tag,
                    len: len.into(),
                });
            }
            let total = 1 + len as usize;
            let step = if visitor.wants_body(tag) {
                if rest.len() < total {
                    return Ok(total - rest.len());
                }
                let step = visitor.visit(tag, &rest[5..total]);
                if step != Step::Hold {
                    self.ready += total;
                }
                step
            } else {
                let step = visitor.visit(tag, &[]);
                if step != Step::Hold {
                    let take = total.min(rest.len());
                    self.ready += take;
                    self.streaming = total - take;
                }
                step
            };
            if step != Step::Forward {
                self.stopped = true;
            }
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tags {
        seen: Vec<(u8, Vec<u8>)>,
        stop_on: u8,
    }

    impl Visit for Tags {
        fn wants_body(&self, tag: u8) -> bool {
            tag == b'Z'
        }
        fn visit(&mut self, tag: u8, body: &[u8]) -> Step {
            self.seen.push((tag, body.to_vec()));
            if tag == self.stop_on {
                Step::ForwardThenStop
            } else {
                Step::Forward
            }
        }
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn streams_large_bodies_and_holds_wanted_ones() {
        let mut buf = msg(b'D', &[7; 100]);
        buf.extend(msg(b'Z', b"I"));
        let mut s = Scanner::default();
        let mut v = Tags {
            seen: vec![],
            stop_on: b'Z',
        };
        // Only part of the DataRow has arrived: it is forwardable already.
        assert_eq!(s.scan(&buf[..50], 1000, &mut v).unwrap(), 0);
        assert_eq!(s.ready(), 50);
        assert!(!s.at_boundary());
        // The rest of it plus three bytes of ReadyForQuery.
        assert_eq!(s.scan(&buf[..108], 1000, &mut v).unwrap(), 0);
        assert_eq!(s.ready(), 105);
        assert!(s.at_boundary());
        assert_eq!(s.scan(&buf[..109], 1000, &mut v).unwrap(), 0);
        assert_eq!(s.scan(&buf[..110], 1000, &mut v).unwrap(), 1);
        assert_eq!(s.scan(&buf, 1000, &mut v).unwrap(), 0);
        assert_eq!(s.ready(), buf.len());
        assert!(s.stopped());
        assert_eq!(v.seen, vec![(b'D', vec![]), (b'Z', b"I".to_vec())]);
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut s = Scanner::default();
        let mut v = Tags {
            seen: vec![],
            stop_on: 0,
        };
        let bad = [b'Q', 0, 0, 0, 3];
        assert!(s.scan(&bad, 1000, &mut v).is_err());
        let huge = [b'Q', 0x7f, 0, 0, 0];
        assert_eq!(
            s.scan(&huge, 1000, &mut v),
            Err(BadLength {
                tag: b'Q',
                len: 0x7f00_0000
            })
        );
    }

    #[test]
    fn consumed_keeps_positions() {
        let mut buf = msg(b'C', b"SELECT 1\0");
        buf.extend(msg(b'Z', b"I"));
        let mut s = Scanner::default();
        let mut v = Tags {
            seen: vec![],
            stop_on: 0,
        };
        s.scan(&buf, 1000, &mut v).unwrap();
        assert_eq!(s.ready(), buf.len());
        s.consumed(buf.len());
        assert_eq!(s.ready(), 0);
    }
}
