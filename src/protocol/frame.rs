//! Message boundaries in a read buffer, found without parsing bodies, and
//! the copying of messages into an output buffer as a visitor decides.
//!
//! Every tagged message is `tag: u8, len: i32 (includes itself), body`. The
//! relay reads bytes into one `BytesMut` per socket; a [`Scanner`] moves
//! whole messages from it to the other side's output buffer, asking a
//! [`Visit`]or what to do with each. Only messages a visitor asks to see
//! whole (ReadyForQuery, Parse, ...) wait until complete; all others are
//! passed on as their bytes arrive, so a 1 GB DataRow or CopyData needs no
//! 1 GB buffer.

use bytes::{Buf, BytesMut};

/// What to do with a message that has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Copy it to the output as it is.
    Forward,
    /// Skip it: the visitor wrote whatever replaces it (possibly nothing).
    Drop,
    /// Leave it, and everything after it, in the input; stop.
    Hold,
}

/// A message longer than the configured maximum, or with a length below 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadLength {
    pub tag: u8,
    pub len: i64,
}

/// The per-direction state: where a streamed message stands.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Body bytes of a message being passed through that have not arrived.
    streaming: usize,
    /// Whether those bytes are copied (Forward) or skipped (Drop).
    streaming_copies: bool,
}

/// The visitor a [`Scanner`] reports messages to.
pub trait Visit {
    /// Whether a message with this tag must be whole before it is visited.
    /// Otherwise it is visited at its header, with an empty body, and may
    /// only be forwarded or dropped.
    /// `len` is the message's length field (body length + 4).
    fn wants_body(&self, tag: u8, len: usize) -> bool;
    /// Decides about one message; may append replacement bytes to `out`.
    fn visit(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Step;
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
    /// Whether the scanner is between messages (nothing streamed half-way).
    pub fn at_boundary(&self) -> bool {
        self.streaming == 0
    }

    /// Moves what it can from `input` to `out`. Returns how many more bytes
    /// `input` must receive for a held-whole message to complete (0 when
    /// nothing waits on a body). Stops early when the visitor says Hold.
    pub fn translate(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        max_len: usize,
        visitor: &mut impl Visit,
    ) -> Result<usize, BadLength> {
        loop {
            if self.streaming > 0 {
                let take = self.streaming.min(input.len());
                if self.streaming_copies {
                    out.extend_from_slice(&input[..take]);
                }
                input.advance(take);
                self.streaming -= take;
                if self.streaming > 0 {
                    return Ok(0);
                }
            }
            let Some((tag, len)) = header(input) else {
                return Ok(0);
            };
            if len < 4 || len as usize > max_len {
                return Err(BadLength {
                    tag,
                    len: len.into(),
                });
            }
            let total = 1 + len as usize;
            if visitor.wants_body(tag, len as usize) {
                if input.len() < total {
                    return Ok(total - input.len());
                }
                match visitor.visit(tag, &input[5..total], out) {
                    Step::Forward => out.extend_from_slice(&input[..total]),
                    Step::Drop => {}
                    Step::Hold => return Ok(0),
                }
                input.advance(total);
            } else {
                let step = visitor.visit(tag, &[], out);
                if step == Step::Hold {
                    return Ok(0);
                }
                // Pass on (or skip) the header now and the body as it comes.
                self.streaming = total;
                self.streaming_copies = step == Step::Forward;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tags {
        seen: Vec<(u8, Vec<u8>)>,
        drop: u8,
        hold: u8,
    }

    impl Visit for Tags {
        fn wants_body(&self, tag: u8, _len: usize) -> bool {
            tag == b'Z'
        }
        fn visit(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Step {
            self.seen.push((tag, body.to_vec()));
            if tag == self.hold {
                Step::Hold
            } else if tag == self.drop {
                out.extend_from_slice(b"!");
                Step::Drop
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

    fn tags() -> Tags {
        Tags {
            seen: vec![],
            drop: 0,
            hold: 0,
        }
    }

    #[test]
    fn streams_large_bodies_and_holds_wanted_ones() {
        let mut all = msg(b'D', &[7; 100]);
        all.extend(msg(b'Z', b"I"));
        let mut s = Scanner::default();
        let mut v = tags();
        let mut out = BytesMut::new();
        // Only part of the DataRow has arrived: it is passed on already.
        let mut input = BytesMut::from(&all[..50]);
        assert_eq!(s.translate(&mut input, &mut out, 1000, &mut v).unwrap(), 0);
        assert_eq!(out.len(), 50);
        assert!(input.is_empty());
        assert!(!s.at_boundary());
        // The rest of it, and ReadyForQuery's header: 1 byte missing.
        input.extend_from_slice(&all[50..110]);
        assert_eq!(s.translate(&mut input, &mut out, 1000, &mut v).unwrap(), 1);
        assert_eq!(out.len(), 105);
        assert!(s.at_boundary());
        input.extend_from_slice(&all[110..]);
        assert_eq!(s.translate(&mut input, &mut out, 1000, &mut v).unwrap(), 0);
        assert_eq!(&out[..], &all[..]);
        assert_eq!(v.seen, vec![(b'D', vec![]), (b'Z', b"I".to_vec())]);
    }

    #[test]
    fn drops_and_holds() {
        let mut all = msg(b'D', &[1; 10]);
        all.extend(msg(b'C', b"x\0"));
        all.extend(msg(b'X', b""));
        all.extend(msg(b'Q', b"q\0"));
        let mut v = Tags {
            seen: vec![],
            drop: b'D',
            hold: b'X',
        };
        let mut out = BytesMut::new();
        let mut input = BytesMut::from(&all[..]);
        Scanner::default()
            .translate(&mut input, &mut out, 1000, &mut v)
            .unwrap();
        let mut expected = b"!".to_vec();
        expected.extend(msg(b'C', b"x\0"));
        assert_eq!(&out[..], &expected[..]);
        assert_eq!(input[0], b'X');
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut s = Scanner::default();
        let mut out = BytesMut::new();
        let mut bad = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert!(s.translate(&mut bad, &mut out, 1000, &mut tags()).is_err());
        let mut huge = BytesMut::from(&[b'Q', 0x7f, 0, 0, 0][..]);
        assert_eq!(
            s.translate(&mut huge, &mut out, 1000, &mut tags()),
            Err(BadLength {
                tag: b'Q',
                len: 0x7f00_0000
            })
        );
    }
}
