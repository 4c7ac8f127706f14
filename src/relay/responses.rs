//! Backend messages on their way to the client.
//!
//! Replies to requests pgdyno injected (the `SET`s that sync session
//! parameters, Parses of statements the backend lacked, Closes of evicted
//! ones) are hidden; everything else passes as it is. ParameterStatus keeps
//! both the backend's and the client's view of its parameters current.

use bytes::BytesMut;

use super::pipeline::{Kind, Pipeline};
use crate::backend;
use crate::prepared::BackendStatements;
use crate::protocol::frame::{Step, Visit};
use crate::protocol::{fields, TransactionStatus};
use crate::session::{self, Session};
use crate::stats::{PoolStats, Tally};

pub struct FromBackend<'a> {
    pub pipeline: &'a mut Pipeline,
    pub session: &'a mut Session,
    pub params: &'a mut Vec<(String, String)>,
    pub synced: &'a mut Option<crate::session::Params>,
    pub statements: &'a mut BackendStatements,
    pub extra_tracked: &'a [String],
    pub transaction_mode: bool,
    pub tally: &'a mut Tally,
    pub stats: &'a PoolStats,
    /// Tracked parameters reported since the last ReadyForQuery.
    pub reported: &'a mut Vec<String>,
    /// A RESET or DISCARD ALL completed since the last ReadyForQuery.
    pub reset_seen: &'a mut bool,
    pub span: &'a tracing::Span,
}

impl Visit for FromBackend<'_> {
    /// Everything but the bulk (DataRow, CopyData, notices) is small and
    /// held whole: a message that closes a reply is written here, followed
    /// by any local replies it makes due.
    fn wants_body(&self, tag: u8, _len: usize) -> bool {
        !matches!(tag, b'D' | b'd' | b'N' | b'A')
    }

    // Inlined into `Scanner::translate`, its one caller: a call per
    // message spilled registers (callgrind, both visitors: 90 fewer
    // instructions per transaction).
    #[inline(always)]
    fn visit(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Step {
        // The head stays the same until the end of this visit (the one
        // branch that changes the pipeline returns at once).
        let head = self.pipeline.head();
        let hidden = head.is_some_and(|(_, hidden)| hidden);
        let closes = head.is_some_and(|(kind, _)| kind.closed_by(tag));
        match tag {
            b'S' => {
                if let Some((name, value)) = fields::parameter_status(body) {
                    backend::set_param(self.params, name, value);
                    *self.synced = None;
                    if !hidden && session::is_tracked(name, self.extra_tracked) {
                        // Told to the client just before ReadyForQuery, once
                        // pgdyno knows whether a RESET changes what to say.
                        self.session.set_param(name, value);
                        self.reported.retain(|n| n != name);
                        self.reported.push(name.to_owned());
                        return Step::Drop;
                    }
                }
            }
            b'Z' => {
                if let Some(status) = body.first().and_then(|&b| TransactionStatus::from_byte(b)) {
                    self.pipeline.status = status;
                }
                if !hidden {
                    if self.pipeline.len() <= 1 {
                        self.pipeline.set_default = false;
                    }
                    if std::mem::take(self.reset_seen) {
                        self.restore_startup_params();
                    }
                    for name in self.reported.drain(..) {
                        if let Some(value) = self.session.param(&name) {
                            crate::protocol::write::parameter_status(out, &name, value);
                        }
                    }
                    let idle = self.pipeline.status == TransactionStatus::Idle;
                    self.tally
                        .ready_for_query(idle, self.pipeline.len() > 1, self.stats);
                }
            }
            b'G' => self.pipeline.copy_in = true,
            b'C' => self.command_complete(body),
            b'E' => {
                if !hidden {
                    self.stats
                        .error(fields::error_field(body, b'C').unwrap_or("XX000"));
                }
                if let Some((kind, _)) = head {
                    if !matches!(kind, Kind::Query | Kind::Sync) {
                        self.pipeline.fail_until_sync(self.session, self.statements);
                        // A failed injected Parse is the client's error too:
                        // the statement it asked for cannot be prepared.
                        return Step::Forward;
                    }
                }
                if hidden {
                    self.span.in_scope(|| {
                        tracing::warn!(
                            "a parameter SET pgdyno sent failed; the client keeps its own view"
                        )
                    });
                }
            }
            _ => {}
        }
        if !closes {
            return if hidden { Step::Drop } else { Step::Forward };
        }
        if !hidden {
            copy_message(out, tag, body);
        }
        self.pipeline.close_head(out);
        Step::Drop
    }
}

fn copy_message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.reserve(5 + body.len());
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

impl FromBackend<'_> {
    /// Commands whose effects pgdyno must know of.
    /// RESET (or DISCARD ALL, or SET ... TO DEFAULT) put parameters back to
    /// the backend's own startup values; the client's are its own startup
    /// values: that is what it is told, and the SETs are sent before its
    /// next request.
    fn restore_startup_params(&mut self) {
        for name in self.reported.iter() {
            let startup = self.session.startup.iter().find(|(k, _)| k == name);
            let Some((_, value)) = startup.cloned() else {
                continue;
            };
            self.session.set_param(name, &value);
            self.session.resync = true;
        }
    }

    fn command_complete(&mut self, body: &[u8]) {
        let tag = fields::cstr(body).map(|(t, _)| t).unwrap_or_default();
        match tag {
            b"DEALLOCATE ALL" => {
                self.statements.clear();
                self.session.statements.clear();
            }
            b"SET" if self.pipeline.set_default => {
                self.pipeline.set_default = false;
                *self.reset_seen = true;
            }
            b"DISCARD ALL" | b"RESET" => {
                if tag == b"DISCARD ALL" {
                    self.statements.clear();
                    self.session.statements.clear();
                }
                // PostgreSQL reports the changed values just before
                // ReadyForQuery: they are dealt with there.
                *self.reset_seen = true;
            }
            b"LISTEN" if self.transaction_mode => self.span.in_scope(|| {
                tracing::warn!(
                    "LISTEN in transaction mode: notifications will not reach this client reliably"
                )
            }),
            b"PREPARE" if self.transaction_mode => self.span.in_scope(|| {
                tracing::warn!("SQL PREPARE in transaction mode: the statement stays on one backend; use protocol-level prepared statements")
            }),
            _ => {}
        }
    }
}
