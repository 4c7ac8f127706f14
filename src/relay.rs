//! One bound stretch of a client's life: its messages go to the backend,
//! the backend's replies come back, until the backend may be released.
//!
//! Both directions are pumped at once from one task (no channel, no second
//! task): bytes are read into each socket's `BytesMut`, a [`Scanner`] finds
//! message boundaries, and whole runs of messages are written on as the
//! bytes they arrived as. Only message tags are looked at, plus the status
//! byte of ReadyForQuery and ParameterStatus bodies.
//!
//! When may a transaction-mode backend go back to the pool? When it has
//! answered everything the client sent (every Query, Sync and FunctionCall
//! has had its ReadyForQuery), nothing extended is waiting for a Sync, its
//! last ReadyForQuery said idle, and no byte is left half-way in either
//! direction. [`Tracker`] keeps that count.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use crate::backend::{self, Backend};
use crate::error::{Error, Result};
use crate::protocol::frame::{Scanner, Step, Visit};
use crate::protocol::{fields, TransactionStatus};
use crate::stream::{Conn, READ_BUF};

/// How far a direction reads ahead of what the other side has taken.
const MAX_BUFFERED: usize = 64 * 1024;

/// How a bound stretch ended (errors aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend is idle and owes the client nothing: release it.
    Released,
    /// The client sent Terminate or closed its socket. `clean` says whether
    /// the backend was idle with nothing outstanding at that moment.
    ClientLeft { clean: bool },
}

/// What the client has asked for that the backend has not yet finished.
#[derive(Debug)]
pub struct Tracker {
    /// ReadyForQuery messages still due (one per Query, Sync, FunctionCall).
    pending: u32,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    status: TransactionStatus,
    /// The backend said CopyInResponse and the client has not ended the copy.
    copy_in: bool,
    /// Syncs since the last Execute or Query: PostgreSQL ignores those that
    /// arrive during COPY FROM STDIN, so they earn no ReadyForQuery.
    syncs_since_execute: u32,
    /// The client sent Terminate.
    terminated: bool,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            pending: 0,
            unsynced: false,
            status: TransactionStatus::Idle,
            copy_in: false,
            syncs_since_execute: 0,
            terminated: false,
        }
    }
}

impl Tracker {
    /// Nothing outstanding and no transaction open.
    pub fn idle(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.status == TransactionStatus::Idle
    }

    pub fn status(&self) -> TransactionStatus {
        self.status
    }
}

/// Client messages, seen on their way to the backend.
struct FromClient<'a>(&'a mut Tracker);

impl Visit for FromClient<'_> {
    fn wants_body(&self, _tag: u8) -> bool {
        false
    }

    fn visit(&mut self, tag: u8, _body: &[u8]) -> Step {
        let t = &mut *self.0;
        match tag {
            b'Q' => {
                t.pending += 1;
                t.syncs_since_execute = 0;
            }
            b'F' => t.pending += 1,
            b'S' => {
                t.pending += 1;
                t.unsynced = false;
                t.syncs_since_execute += 1;
            }
            b'E' => {
                t.unsynced = true;
                t.syncs_since_execute = 0;
            }
            b'P' | b'B' | b'D' | b'C' | b'H' => t.unsynced = true,
            b'c' | b'f' => {
                if t.copy_in {
                    t.copy_in = false;
                    t.pending = t.pending.saturating_sub(t.syncs_since_execute);
                    t.syncs_since_execute = 0;
                }
            }
            b'd' => {}
            b'X' => {
                t.terminated = true;
                return Step::Hold;
            }
            // Anything else: PostgreSQL answers with a FATAL error and
            // closes; treat it as outstanding so the backend is not reused.
            _ => t.unsynced = true,
        }
        Step::Forward
    }
}

/// Backend messages, seen on their way to the client.
struct FromBackend<'a> {
    tracker: &'a mut Tracker,
    params: &'a mut Vec<(String, String)>,
}

impl Visit for FromBackend<'_> {
    fn wants_body(&self, tag: u8) -> bool {
        matches!(tag, b'Z' | b'S')
    }

    fn visit(&mut self, tag: u8, body: &[u8]) -> Step {
        match tag {
            b'Z' => {
                let t = &mut *self.tracker;
                t.pending = t.pending.saturating_sub(1);
                if let Some(status) = body.first().and_then(|&b| TransactionStatus::from_byte(b)) {
                    t.status = status;
                }
            }
            b'G' => self.tracker.copy_in = true,
            b'S' => {
                if let Some((name, value)) = fields::parameter_status(body) {
                    backend::set_param(self.params, name, value);
                }
            }
            _ => {}
        }
        Step::Forward
    }
}

/// The state of one bound stretch.
pub struct Relay<'a> {
    client: &'a mut Conn,
    backend: &'a mut Backend,
    tracker: Tracker,
    from_client: Scanner,
    from_backend: Scanner,
    /// Bytes the backend buffer must hold for a held message to complete.
    backend_need: usize,
    client_done: bool,
    max_packet: usize,
    /// Transaction mode: stop at the first clean point.
    release_when_idle: bool,
}

impl<'a> Relay<'a> {
    pub fn new(
        client: &'a mut Conn,
        backend: &'a mut Backend,
        max_packet: usize,
        release_when_idle: bool,
    ) -> Self {
        Relay {
            client,
            backend,
            tracker: Tracker::default(),
            from_client: Scanner::default(),
            from_backend: Scanner::default(),
            backend_need: 0,
            client_done: false,
            max_packet,
            release_when_idle,
        }
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Pumps both directions until the backend may be released or the
    /// client leaves.
    ///
    /// # Cancel safety
    /// Not cancel safe: bytes may have been forwarded that the tracker
    /// counted; a dropped relay leaves the backend in an unknown state.
    pub async fn run(&mut self) -> Result<Outcome> {
        // The client's buffer may already hold its first messages.
        self.scan_client()?;
        poll_fn(|cx| self.poll_run(cx)).await
    }

    fn scan_client(&mut self) -> Result<()> {
        let mut visitor = FromClient(&mut self.tracker);
        self.from_client
            .scan(&self.client.rbuf, self.max_packet, &mut visitor)
            .map_err(|bad| {
                Error::ClientProtocol(format!(
                    "invalid message length {} for message type {:?} (max_packet_size)",
                    bad.len, bad.tag as char
                ))
            })?;
        if self.tracker.terminated {
            self.client_done = true;
        }
        Ok(())
    }

    fn scan_backend(&mut self) -> Result<()> {
        let Backend { conn, params, .. } = &mut *self.backend;
        let mut visitor = FromBackend {
            tracker: &mut self.tracker,
            params,
        };
        self.backend_need = self
            .from_backend
            .scan(&conn.rbuf, usize::MAX / 2, &mut visitor)
            .map_err(|bad| Error::BackendProtocol(format!("invalid message length {}", bad.len)))?;
        Ok(())
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Result<Outcome>> {
        loop {
            let mut progress = false;

            // Client -> backend.
            let ready = self.from_client.ready();
            if ready > 0 {
                match Pin::new(&mut self.backend.conn.stream)
                    .poll_write(cx, &self.client.rbuf[..ready])
                {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(Error::BackendGone)),
                    Poll::Ready(Ok(n)) => {
                        self.client.rbuf.advance(n);
                        self.from_client.consumed(n);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::BackendIo(e))),
                    Poll::Pending => {}
                }
            }
            if !self.client_done && self.client.rbuf.len() < MAX_BUFFERED {
                reserve(&mut self.client.rbuf);
                match poll_read_buf(Pin::new(&mut self.client.stream), cx, &mut self.client.rbuf) {
                    Poll::Ready(Ok(0)) => {
                        self.client_done = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => {
                        self.scan_client()?;
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => {
                        self.client_done = true;
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
            if self.client_done && self.from_client.ready() == 0 {
                return Poll::Ready(Ok(Outcome::ClientLeft {
                    clean: self.is_clean(),
                }));
            }

            // Backend -> client.
            let ready = self.from_backend.ready();
            if ready > 0 {
                match Pin::new(&mut self.client.stream)
                    .poll_write(cx, &self.backend.conn.rbuf[..ready])
                {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        self.backend.conn.rbuf.advance(n);
                        self.from_backend.consumed(n);
                        progress = true;
                    }
                    Poll::Ready(_) => {
                        // The client is gone; what it was owed no longer matters.
                        self.client_done = true;
                        self.backend.conn.rbuf.advance(ready);
                        self.from_backend.consumed(ready);
                        return Poll::Ready(Ok(Outcome::ClientLeft {
                            clean: self.is_clean(),
                        }));
                    }
                    Poll::Pending => {}
                }
            }
            let limit = MAX_BUFFERED.max(self.backend.conn.rbuf.len() + self.backend_need);
            if self.backend.conn.rbuf.len() < limit {
                reserve(&mut self.backend.conn.rbuf);
                match poll_read_buf(
                    Pin::new(&mut self.backend.conn.stream),
                    cx,
                    &mut self.backend.conn.rbuf,
                ) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(Error::BackendGone)),
                    Poll::Ready(Ok(_)) => {
                        self.scan_backend()?;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::BackendIo(e))),
                    Poll::Pending => {}
                }
            }

            if self.release_when_idle && self.is_clean() {
                return Poll::Ready(Ok(Outcome::Released));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// The backend owes nothing and no byte is half-way in either direction.
    fn is_clean(&self) -> bool {
        self.tracker.idle()
            && self.from_client.ready() == 0
            && self.from_client.at_boundary()
            && self.from_backend.ready() == 0
            && self.backend.conn.rbuf.is_empty()
    }
}

fn reserve(buf: &mut bytes::BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_BUF);
    }
}
