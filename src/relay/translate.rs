//! The relay's work on bytes, apart from its sockets: what came in from one
//! side is scanned, looked at by [`FromClient`] or [`FromBackend`], and
//! copied to the other side's write buffer. The relay calls it after each
//! read; the fuzzer ([`super::fuzzing`]) calls it with bytes of its own.

use bytes::BytesMut;

use super::pipeline::Pipeline;
use super::requests::FromClient;
use super::responses::FromBackend;
use super::RelaySettings;
use crate::backend::Live;
use crate::clock::Micros;
use crate::error::{Error, Result};
use crate::prepared::BackendStatements;
use crate::protocol::frame::Scanner;
use crate::session::{Params, Session};
use crate::stats::Tally;

/// Where a bound stretch's translation stands, in both directions. Each
/// backend keeps one ([`Live::stretch`]) for the stretches it serves.
pub(crate) struct Translation {
    pub pipeline: Pipeline,
    pub tally: Tally,
    /// Tracked parameters reported since the last CommandComplete.
    pub reported: Vec<String>,
    pub reset_seen: bool,
    pub from_client: Scanner,
    pub from_backend: Scanner,
    /// Bytes a read buffer must hold for a whole-held message to complete.
    pub client_need: usize,
    pub backend_need: usize,
    /// The client sent Terminate (or its socket ended).
    pub client_done: bool,
}

/// The backend's part: its buffers and what pgdyno knows of its session.
pub(crate) struct BackendSide<'a> {
    pub rbuf: &'a mut BytesMut,
    pub wbuf: &'a mut BytesMut,
    pub params: &'a mut Vec<(String, String)>,
    pub synced: &'a mut Option<Params>,
    pub statements: &'a mut BackendStatements,
}

impl<'a> BackendSide<'a> {
    /// A backend's part, and its translation.
    pub fn of(backend: &'a mut Live) -> (&'a mut Translation, Self) {
        let Live {
            conn,
            params,
            synced,
            statements,
            stretch,
            ..
        } = backend;
        let side = BackendSide {
            rbuf: &mut conn.rbuf,
            wbuf: &mut conn.wbuf,
            params,
            synced,
            statements,
        };
        (stretch, side)
    }
}

impl Translation {
    pub fn new(now: Micros) -> Self {
        Translation {
            pipeline: Pipeline::default(),
            tally: Tally::starting(now),
            reported: Vec::new(),
            reset_seen: false,
            from_client: Scanner::default(),
            from_backend: Scanner::default(),
            client_need: 0,
            backend_need: 0,
            client_done: false,
        }
    }

    /// As new, for the next stretch, whose first request came at `now`.
    /// Field by field (every field named): rebuilding the whole would drop
    /// and copy more than relaying a short query costs.
    pub fn restart(&mut self, now: Micros) {
        let Translation {
            pipeline,
            tally,
            reported,
            reset_seen,
            from_client,
            from_backend,
            client_need,
            backend_need,
            client_done,
        } = self;
        pipeline.restart();
        *tally = Tally::starting(now);
        reported.clear();
        (*from_client, *from_backend) = (Scanner::default(), Scanner::default());
        (*client_need, *backend_need) = (0, 0);
        (*reset_seen, *client_done) = (false, false);
    }

    /// Takes what the client sent (`input`) on to `backend`, answering some
    /// of it itself in `to_client`.
    pub fn client(
        &mut self,
        session: &mut Session,
        settings: &RelaySettings<'_>,
        input: &mut BytesMut,
        to_client: &mut BytesMut,
        backend: BackendSide<'_>,
    ) -> Result<()> {
        let before = input.len();
        let mut visitor = FromClient {
            pipeline: &mut self.pipeline,
            session,
            statements: backend.statements,
            to_client,
            max_prepared: if settings.transaction_mode {
                settings.max_prepared
            } else {
                0
            },
            tally: &mut self.tally,
            params: backend.params,
            terminated: false,
            refuse_simple_query: settings.refuse_simple_query,
            refused: false,
        };
        self.client_need = self
            .from_client
            .translate(input, backend.wbuf, settings.max_packet, &mut visitor)
            .map_err(|bad| {
                Error::ClientProtocol(format!(
                    "invalid message length {} for message type {:?} (max_packet_size)",
                    bad.len, bad.tag as char
                ))
            })?;
        if visitor.terminated {
            self.client_done = true;
        }
        if visitor.refused {
            // PgBouncer's words for it.
            return Err(Error::ClientProtocol(
                "PQexec disallowed (disable_pqexec: simple Query messages are refused)".into(),
            ));
        }
        self.tally.bytes_received += (before - input.len()) as u64;
        Ok(())
    }

    /// Takes what the backend sent on to `to_client`.
    pub fn backend(
        &mut self,
        session: &mut Session,
        settings: &RelaySettings<'_>,
        to_client: &mut BytesMut,
        backend: BackendSide<'_>,
    ) -> Result<()> {
        let mut visitor = FromBackend {
            pipeline: &mut self.pipeline,
            session,
            params: backend.params,
            synced: backend.synced,
            statements: backend.statements,
            extra_tracked: settings.extra_tracked,
            transaction_mode: settings.transaction_mode,
            tally: &mut self.tally,
            stats: settings.stats,
            reported: &mut self.reported,
            reset_seen: &mut self.reset_seen,
            span: settings.span,
        };
        self.backend_need = self
            .from_backend
            .translate(backend.rbuf, to_client, usize::MAX / 2, &mut visitor)
            .map_err(|bad| Error::BackendProtocol(format!("invalid message length {}", bad.len)))?;
        Ok(())
    }

    /// Nothing is owed or half-way, as far as the bytes go (the relay also
    /// checks its sockets).
    pub fn at_rest(&self) -> bool {
        self.pipeline.idle() && self.from_client.at_boundary() && self.from_backend.at_boundary()
    }
}
