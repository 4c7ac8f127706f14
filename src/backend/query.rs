//! pgdyno's own queries on a backend (`server_reset_query`, checks, auto
//! pool sizing), never client traffic.

use postgres_protocol::message::frontend;

use super::{io_err, rejected, set_param, Backend, MAX_LOGIN_MESSAGE};
use crate::error::{Error, Result};
use crate::protocol::fields;

impl Backend {
    /// Sends `query` with the simple protocol.
    async fn send_query(&mut self, query: &str) -> Result<()> {
        frontend::query(query, &mut self.conn.wbuf).map_err(Error::BackendIo)?;
        self.conn.flush().await.map_err(io_err)
    }

    /// The server's next message in answer.
    async fn next_reply(&mut self) -> Result<crate::stream::Message> {
        self.conn
            .read_message(MAX_LOGIN_MESSAGE)
            .await
            .map_err(io_err)
    }

    /// Runs a query with the simple protocol and discards its results: for
    /// `server_reset_query` and checks, never for client traffic.
    pub async fn simple_query(&mut self, query: &str) -> Result<()> {
        self.send_query(query).await?;
        let mut failure = None;
        loop {
            let msg = self.next_reply().await?;
            match msg.tag {
                b'E' => failure = Some(rejected(&msg.body, "query failed")),
                b'S' => {
                    if let Some((k, v)) = fields::parameter_status(&msg.body) {
                        set_param(&mut self.params, k, v);
                        self.synced = None;
                    }
                }
                b'Z' => {
                    let idle = msg.body.first() == Some(&b'I');
                    return match failure {
                        Some(e) => Err(e),
                        None if idle => Ok(()),
                        None => Err(Error::BackendProtocol(
                            "backend not idle after query".into(),
                        )),
                    };
                }
                _ => {}
            }
        }
    }

    /// The first row of a simple query's result, as text: for pgdyno's own
    /// questions to the server (auto pool sizing), never client traffic.
    pub async fn query_row(&mut self, query: &str) -> Result<Vec<Option<String>>> {
        self.send_query(query).await?;
        let mut row = None;
        let mut failure = None;
        loop {
            let msg = self.next_reply().await?;
            let mut body = &msg.body[..];
            match msg.tag {
                b'D' if row.is_none() => {
                    let mut values = Vec::new();
                    let count = take_i16(&mut body)?;
                    for _ in 0..count {
                        let len = take_i32(&mut body)?;
                        if len < 0 {
                            values.push(None);
                            continue;
                        }
                        let len = len as usize;
                        let bytes = body
                            .get(..len)
                            .ok_or_else(|| Error::BackendProtocol("short DataRow".into()))?;
                        values.push(Some(String::from_utf8_lossy(bytes).into_owned()));
                        body = &body[len..];
                    }
                    row = Some(values);
                }
                b'E' => failure = Some(rejected(body, "query failed")),
                b'Z' => {
                    return match (failure, row) {
                        (Some(e), _) => Err(e),
                        (None, Some(row)) => Ok(row),
                        (None, None) => {
                            Err(Error::BackendProtocol("the query returned no row".into()))
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn take_i16(body: &mut &[u8]) -> Result<i16> {
    let v = body
        .get(..2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| Error::BackendProtocol("short message".into()))?;
    *body = &body[2..];
    Ok(v)
}

fn take_i32(body: &mut &[u8]) -> Result<i32> {
    let v = body
        .get(..4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| Error::BackendProtocol("short message".into()))?;
    *body = &body[4..];
    Ok(v)
}
