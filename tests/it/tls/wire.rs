//! The protocol by hand over any byte stream, a TLS one included: what
//! `harness::RawConn` does over plain TCP, trimmed to a startup packet, a
//! SCRAM login (with or without channel binding) and simple queries. It
//! lets the tests see the SASL mechanisms pgdyno offers and lie about
//! channel binding data, which no driver does.

use crate::harness::*;
use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::frontend;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

pub struct WireConn<S> {
    stream: S,
    buf: BytesMut,
}

/// How the client answers SCRAM: which mechanism, which binding data.
pub enum Scram {
    /// SCRAM-SHA-256, "n,," (the client does not do channel binding).
    Plain,
    /// SCRAM-SHA-256-PLUS with this tls-server-end-point hash.
    Plus(Vec<u8>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> WireConn<S> {
    pub fn new(stream: S) -> WireConn<S> {
        WireConn {
            stream,
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).await.expect("send to pgdyno");
    }

    async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// The next backend message, None once pgdyno closed the connection
    /// (or reset it, or ended TLS). Panics if nothing comes within 10 s.
    pub async fn recv(&mut self) -> Option<Msg> {
        loop {
            if let Some(msg) = take_message(&mut self.buf) {
                return Some(msg);
            }
            let read = self.stream.read_buf(&mut self.buf);
            match tokio::time::timeout(Duration::from_secs(10), read).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => panic!("pgdyno sent nothing within 10 s"),
            }
        }
    }

    /// Sends a startup packet for `app` on `db`; returns pgdyno's answer
    /// (None if it closed instead).
    pub async fn start(&mut self, db: &str) -> Option<Msg> {
        let packet = startup_packet(&[("user", APP_USER), ("database", db)]);
        self.try_send(&packet).await.ok()?;
        self.recv().await
    }

    /// Logs in with SCRAM as `scram` says, answering the AuthenticationSASL
    /// `first` (from `start`), and reads up to the first ReadyForQuery.
    pub async fn scram_login(&mut self, first: &Msg, scram: Scram) -> Result<(), ErrorFields> {
        assert_eq!(auth_code(first), Some(AUTH_SASL), "not a SASL request");
        let (mechanism, binding) = match scram {
            Scram::Plain => (SCRAM_SHA_256, ChannelBinding::unsupported()),
            Scram::Plus(hash) => (
                SCRAM_SHA_256_PLUS,
                ChannelBinding::tls_server_end_point(hash),
            ),
        };
        let mut scram = ScramSha256::new(APP_PASSWORD.as_bytes(), binding);
        let mut out = BytesMut::new();
        frontend::sasl_initial_response(mechanism, scram.message(), &mut out).unwrap();
        self.send(&out.split()).await;
        loop {
            let msg = self.recv().await.expect("pgdyno closed during login");
            match (msg.tag, auth_code(&msg)) {
                (b'R', Some(AUTH_SASL_CONTINUE)) => {
                    scram.update(&msg.body[4..]).expect("SCRAM server-first");
                    frontend::sasl_response(scram.message(), &mut out).unwrap();
                    self.send(&out.split()).await;
                }
                (b'R', Some(AUTH_SASL_FINAL)) => {
                    scram.finish(&msg.body[4..]).expect("SCRAM server-final")
                }
                (b'R', Some(AUTH_OK)) => break,
                (b'E', _) => return Err(error_fields(&msg)),
                (tag, code) => panic!("unexpected {:?} {code:?} during login", tag as char),
            }
        }
        loop {
            let msg = self.recv().await.expect("pgdyno closed after login");
            match msg.tag {
                b'Z' => return Ok(()),
                b'E' => return Err(error_fields(&msg)),
                _ => {}
            }
        }
    }

    /// Sends a simple Query; returns the text of the first column of each
    /// DataRow, or the ErrorResponse.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<String>, ErrorFields> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).unwrap();
        self.send(&out).await;
        let mut values = Vec::new();
        let mut error = None;
        loop {
            let msg = self.recv().await.expect("pgdyno closed during a query");
            match msg.tag {
                b'D' => values.push(first_column(&msg.body)),
                b'E' => error = Some(error_fields(&msg)),
                b'Z' => return error.map_or(Ok(values), Err),
                _ => {}
            }
        }
    }
}

/// The authentication request code of an 'R' message.
pub fn auth_code(msg: &Msg) -> Option<i32> {
    (msg.tag == b'R' && msg.body.len() >= 4)
        .then(|| i32::from_be_bytes(msg.body[..4].try_into().unwrap()))
}

/// The mechanisms an AuthenticationSASL offers.
pub fn sasl_mechanisms(msg: &Msg) -> Vec<String> {
    assert_eq!(
        auth_code(msg),
        Some(AUTH_SASL),
        "not a SASL request: {msg:?}"
    );
    msg.body[4..]
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect()
}

fn first_column(body: &Bytes) -> String {
    let mut body = &body[..];
    let columns = body.get_i16();
    assert!(columns >= 1, "a DataRow without columns");
    let len = body.get_i32();
    if len < 0 {
        return "NULL".into();
    }
    String::from_utf8_lossy(&body[..len as usize]).into_owned()
}
