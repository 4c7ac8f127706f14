//! The PostgreSQL wire protocol by hand, for what no driver sends: garbage,
//! truncated or oversized packets, silence, a bare SSLRequest. Also a
//! minimal login (trust, cleartext, md5, SCRAM-SHA-256) to see which
//! authentication pgdyno asks for.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const AUTH_OK: i32 = 0;
pub const AUTH_CLEARTEXT: i32 = 3;
pub const AUTH_MD5: i32 = 5;
pub const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// One backend message: its type byte and its body (length word removed).
#[derive(Debug)]
pub struct Msg {
    pub tag: u8,
    pub body: Bytes,
}

/// The fields of an ErrorResponse that tests look at.
#[derive(Debug, Clone)]
pub struct ErrorFields {
    pub code: String,
    pub message: String,
}

pub struct RawConn {
    stream: TcpStream,
    buf: BytesMut,
    /// Body of the last authentication request (code, then its data).
    last_auth: Bytes,
    /// What came between AuthenticationOk and the first ReadyForQuery:
    /// ParameterStatus, BackendKeyData, NoticeResponse.
    greeting: Vec<Msg>,
}

impl RawConn {
    pub async fn connect(port: u16) -> RawConn {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("TCP connect to pgdyno");
        RawConn {
            stream,
            buf: BytesMut::new(),
            last_auth: Bytes::new(),
            greeting: Vec::new(),
        }
    }

    /// Writes bytes; an error (pgdyno already closed) is returned, not fatal.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Closes our sending side, as a client that has nothing more to say.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Reads exactly one byte (the answer to SSLRequest), None on close.
    pub async fn recv_byte(&mut self) -> Option<u8> {
        if self.buf.is_empty() && !self.fill(Duration::from_secs(10)).await {
            return None;
        }
        Some(self.buf.get_u8())
    }

    /// The next backend message, or None once pgdyno closed the connection.
    /// Panics if nothing arrives within 10 s.
    pub async fn recv(&mut self) -> Option<Msg> {
        loop {
            if let Some(msg) = take_message(&mut self.buf) {
                return Some(msg);
            }
            if !self.fill(Duration::from_secs(10)).await {
                assert!(self.buf.is_empty(), "connection closed mid-message");
                return None;
            }
        }
    }

    /// Reads until pgdyno closes the connection, which it must do within
    /// `secs` seconds; returns what it sent before closing.
    pub async fn until_closed(&mut self, secs: u64) -> Vec<Msg> {
        let wait = Duration::from_secs(secs);
        let collect = async {
            let mut msgs = Vec::new();
            while let Some(msg) = self.recv().await {
                msgs.push(msg);
            }
            msgs
        };
        tokio::time::timeout(wait, collect)
            .await
            .unwrap_or_else(|_| panic!("pgdyno did not close the connection within {secs} s"))
    }

    /// Appends what the socket has to the buffer; false on EOF or reset.
    async fn fill(&mut self, wait: Duration) -> bool {
        match tokio::time::timeout(wait, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(_)) => true,
            Err(_) => panic!("pgdyno sent nothing within {wait:?}"),
        }
    }

    /// Sends a startup packet and returns the authentication request code
    /// pgdyno answers with (or its ErrorResponse).
    pub async fn start(&mut self, params: &[(&str, &str)]) -> Result<i32, ErrorFields> {
        self.send(&startup_packet(params))
            .await
            .expect("send startup packet");
        let msg = self.recv().await.expect("pgdyno closed after startup");
        match msg.tag {
            b'R' => Ok(self.note_auth(msg)),
            b'E' => Err(error_fields(&msg)),
            other => panic!("unexpected reply to startup: {:?}", other as char),
        }
    }

    /// Logs in as `user` on `db`, answering whatever authentication pgdyno
    /// asks for, and reads up to the first ReadyForQuery.
    pub async fn login(&mut self, user: &str, password: &str, db: &str) -> Result<(), ErrorFields> {
        self.login_with(user, password, db, &[]).await
    }

    /// Like `login`, with more startup parameters (`options`,
    /// `client_encoding`, `TimeZone`...).
    pub async fn login_with(
        &mut self,
        user: &str,
        password: &str,
        db: &str,
        extra: &[(&str, &str)],
    ) -> Result<(), ErrorFields> {
        let mut params = vec![("user", user), ("database", db)];
        params.extend_from_slice(extra);
        let code = self.start(&params).await?;
        self.authenticate(code, user, password).await
    }

    /// The value of the last ParameterStatus `name` sent during login.
    pub fn login_parameter(&self, name: &str) -> Option<String> {
        self.greeting
            .iter()
            .filter(|m| m.tag == b'S')
            .map(parameter_status)
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .last()
    }

    /// The BackendKeyData (process id, secret key) sent during login.
    pub fn backend_key(&self) -> Option<(i32, i32)> {
        let msg = self.greeting.iter().find(|m| m.tag == b'K')?;
        let pid = i32::from_be_bytes(msg.body.get(..4)?.try_into().ok()?);
        let key = i32::from_be_bytes(msg.body.get(4..8)?.try_into().ok()?);
        Some((pid, key))
    }

    /// Answers the authentication request `code` (from `start`) and those
    /// that follow, then reads up to the first ReadyForQuery.
    pub async fn authenticate(
        &mut self,
        mut code: i32,
        user: &str,
        password: &str,
    ) -> Result<(), ErrorFields> {
        let mut out = BytesMut::new();
        let mut scram = None;
        loop {
            match code {
                AUTH_OK => break,
                AUTH_CLEARTEXT => {
                    frontend::password_message(password.as_bytes(), &mut out).unwrap()
                }
                AUTH_MD5 => {
                    let salt: [u8; 4] = self.last_auth[4..8].try_into().expect("md5 salt");
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        password.as_bytes(),
                        salt,
                    );
                    frontend::password_message(hash.as_bytes(), &mut out).unwrap();
                }
                AUTH_SASL => {
                    let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out).unwrap();
                    scram = Some(s);
                }
                AUTH_SASL_CONTINUE => {
                    let s = scram.as_mut().expect("SASLContinue before SASL");
                    s.update(&self.last_auth[4..]).expect("SCRAM server-first");
                    frontend::sasl_response(s.message(), &mut out).unwrap();
                }
                AUTH_SASL_FINAL => {
                    let s = scram.as_mut().expect("SASLFinal before SASL");
                    s.finish(&self.last_auth[4..]).expect("SCRAM server-final");
                }
                other => panic!("unsupported authentication request {other}"),
            }
            if !out.is_empty() {
                self.send(&out.split()).await.expect("send auth response");
            }
            let msg = self.recv().await.expect("pgdyno closed during login");
            match msg.tag {
                b'R' => code = self.note_auth(msg),
                b'E' => return Err(error_fields(&msg)),
                other => panic!("unexpected message during login: {:?}", other as char),
            }
        }
        loop {
            let msg = self
                .recv()
                .await
                .expect("pgdyno closed after AuthenticationOk");
            match msg.tag {
                b'Z' => return Ok(()),
                b'E' => return Err(error_fields(&msg)),
                _ => self.greeting.push(msg),
            }
        }
    }

    /// Sends a simple Query and returns the messages up to ReadyForQuery.
    pub async fn query(&mut self, sql: &str) -> Vec<Msg> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).unwrap();
        self.send(&out).await.expect("send Query");
        self.until_ready().await
    }

    fn note_auth(&mut self, msg: Msg) -> i32 {
        assert!(msg.body.len() >= 4, "short authentication request");
        let code = i32::from_be_bytes(msg.body[..4].try_into().unwrap());
        self.last_auth = msg.body;
        code
    }
}

/// A StartupMessage (protocol 3.0) with these parameters.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut out).unwrap();
    out.to_vec()
}

/// The 8-byte SSLRequest.
pub fn ssl_request() -> Vec<u8> {
    let mut out = BytesMut::new();
    frontend::ssl_request(&mut out);
    out.to_vec()
}

/// A frontend message with an arbitrary type and length word, for lying
/// about the length.
pub fn message_header(tag: u8, len: u32) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(tag);
    out.put_u32(len);
    out.to_vec()
}

/// Code and message of an ErrorResponse.
pub fn error_fields(msg: &Msg) -> ErrorFields {
    assert_eq!(msg.tag, b'E', "expected an ErrorResponse");
    let mut fields = ErrorFields {
        code: String::new(),
        message: String::new(),
    };
    let mut body = &msg.body[..];
    while let Some((&kind, rest)) = body.split_first() {
        if kind == 0 {
            break;
        }
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let value = String::from_utf8_lossy(&rest[..end]).into_owned();
        match kind {
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            _ => {}
        }
        body = rest.get(end + 1..).unwrap_or_default();
    }
    fields
}

/// Name and value of a ParameterStatus.
pub fn parameter_status(msg: &Msg) -> (String, String) {
    assert_eq!(msg.tag, b'S', "expected a ParameterStatus");
    let mut parts = msg.body.split(|&b| b == 0);
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    (next(), next())
}

/// What pgdyno did with input it should refuse: an ErrorResponse followed
/// by a close, or a close alone. Anything else fails the test.
pub fn assert_refused(msgs: &[Msg], what: &str) -> Option<ErrorFields> {
    match msgs {
        [] => None,
        [first, ..] if first.tag == b'E' => Some(error_fields(first)),
        [first, ..] => panic!(
            "after {what}, pgdyno sent {:?} instead of an ErrorResponse or a close",
            first.tag as char
        ),
    }
}

/// Splits one whole backend message off the front of `buf`, if it holds one.
pub fn take_message(buf: &mut BytesMut) -> Option<Msg> {
    let len = u32::from_be_bytes(buf.get(1..5)?.try_into().unwrap()) as usize;
    assert!(len >= 4, "backend message with length {len}");
    if buf.len() <= len {
        return None;
    }
    let tag = buf.get_u8();
    buf.advance(4);
    let body = buf.split_to(len - 4).freeze();
    Some(Msg { tag, body })
}
