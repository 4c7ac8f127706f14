//! The extended query protocol by hand: Parse, Bind, Describe, Execute,
//! Close and Sync written one at a time, for what drivers never send (a
//! statement name re-used while it is live, a Bind of a name never parsed,
//! a Close followed by a Parse of the same name), and the replies read up
//! to ReadyForQuery.

use super::{error_fields, ErrorFields, Msg, RawConn};
use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;

/// Frontend messages gathered into one buffer, sent as one write.
#[derive(Default)]
pub struct Batch {
    buf: BytesMut,
    /// How many ReadyForQuery the batch asks for (one per Sync or Query).
    readies: usize,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Parse of `query` as statement `name`, parameter types left to the
    /// server.
    pub fn parse(mut self, name: &str, query: &str) -> Batch {
        frontend::parse(name, query, [], &mut self.buf).unwrap();
        self
    }

    /// Bind of statement `statement` to the unnamed portal, with text
    /// parameters (None for NULL) and text results.
    pub fn bind(mut self, statement: &str, params: &[Option<&str>]) -> Batch {
        let mut body = BytesMut::new();
        body.put_u8(0); // unnamed portal
        body.put_slice(statement.as_bytes());
        body.put_u8(0);
        body.put_i16(0); // every parameter in text format
        body.put_i16(params.len() as i16);
        for param in params {
            match param {
                Some(value) => {
                    body.put_i32(value.len() as i32);
                    body.put_slice(value.as_bytes());
                }
                None => body.put_i32(-1),
            }
        }
        body.put_i16(0); // every result column in text format
        self.buf.put_u8(b'B');
        self.buf.put_i32(body.len() as i32 + 4);
        self.buf.put_slice(&body);
        self
    }

    /// Execute of the unnamed portal, all rows.
    pub fn execute(mut self) -> Batch {
        frontend::execute("", 0, &mut self.buf).unwrap();
        self
    }

    /// Bind of `statement` with these parameters, then Execute.
    pub fn run(self, statement: &str, params: &[Option<&str>]) -> Batch {
        self.bind(statement, params).execute()
    }

    pub fn describe_statement(mut self, name: &str) -> Batch {
        frontend::describe(b'S', name, &mut self.buf).unwrap();
        self
    }

    pub fn close_statement(mut self, name: &str) -> Batch {
        frontend::close(b'S', name, &mut self.buf).unwrap();
        self
    }

    pub fn sync(mut self) -> Batch {
        frontend::sync(&mut self.buf);
        self.readies += 1;
        self
    }

    /// A simple Query.
    pub fn query(mut self, sql: &str) -> Batch {
        frontend::query(sql, &mut self.buf).unwrap();
        self.readies += 1;
        self
    }

    /// The bytes, to send without waiting for the replies.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf.to_vec()
    }
}

impl RawConn {
    /// Sends `batch` and returns every reply through the ReadyForQuery
    /// that answers its last Sync or Query.
    pub async fn exchange(&mut self, batch: Batch) -> Vec<Msg> {
        assert!(
            batch.readies > 0,
            "a batch without Sync gets no ReadyForQuery"
        );
        self.send(&batch.buf).await.expect("send to pgdyno");
        let mut msgs = Vec::new();
        for _ in 0..batch.readies {
            msgs.extend(self.until_ready().await);
        }
        msgs
    }

    /// Messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut msgs = Vec::new();
        loop {
            let msg = self
                .recv()
                .await
                .expect("connection closed before ReadyForQuery");
            let done = msg.tag == b'Z';
            msgs.push(msg);
            if done {
                return msgs;
            }
        }
    }
}

/// The replies' type bytes in order, NoticeResponse and ParameterStatus
/// left out: `"12DCZ"` for ParseComplete, BindComplete, DataRow,
/// CommandComplete, ReadyForQuery.
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter()
        .filter(|m| m.tag != b'N' && m.tag != b'S')
        .map(|m| m.tag as char)
        .collect()
}

/// Each DataRow's columns as text (lossy UTF-8), None for NULL.
pub fn rows(msgs: &[Msg]) -> Vec<Vec<Option<String>>> {
    raw_rows(msgs)
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|col| col.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
                .collect()
        })
        .collect()
}

/// Each DataRow's columns as the bytes sent, None for NULL.
pub fn raw_rows(msgs: &[Msg]) -> Vec<Vec<Option<Vec<u8>>>> {
    msgs.iter()
        .filter(|m| m.tag == b'D')
        .map(|m| {
            let body = &m.body[..];
            let count = i16::from_be_bytes([body[0], body[1]]) as usize;
            let mut at = 2;
            let mut row = Vec::with_capacity(count);
            for _ in 0..count {
                let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                at += 4;
                if len < 0 {
                    row.push(None);
                } else {
                    row.push(Some(body[at..at + len as usize].to_vec()));
                    at += len as usize;
                }
            }
            row
        })
        .collect()
}

/// The first row's first column, for one-value queries.
pub fn single_value(msgs: &[Msg]) -> Option<String> {
    rows(msgs).first()?.first()?.clone()
}

/// The ErrorResponses among the replies.
pub fn errors(msgs: &[Msg]) -> Vec<ErrorFields> {
    msgs.iter()
        .filter(|m| m.tag == b'E')
        .map(error_fields)
        .collect()
}

/// The transaction status of the last ReadyForQuery: `I`, `T` or `E`.
pub fn ready_status(msgs: &[Msg]) -> char {
    let last = msgs.last().expect("no replies");
    assert_eq!(last.tag, b'Z', "the last reply is not ReadyForQuery");
    last.body[0] as char
}

/// Fails the test unless the replies' types are `expected` (see `tags`),
/// showing any ErrorResponse in the message.
#[track_caller]
pub fn assert_tags(msgs: &[Msg], expected: &str, what: &str) {
    let got = tags(msgs);
    assert_eq!(
        got,
        expected,
        "{what}: replies {got:?}, expected {expected:?}; errors: {:?}",
        errors(msgs)
    );
}
