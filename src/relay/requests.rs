//! Client messages on their way to the backend.
//!
//! Most pass as they are. In transaction mode with prepared statements on,
//! named statements are renamed to their backend names, prepared on demand
//! on a backend that lacks them, and closed locally.

use std::sync::Arc;

use bytes::BytesMut;

use super::pipeline::{Kind, Pipeline, Undo};
use crate::prepared::{self, BackendStatements, Statement};
use crate::protocol::frame::{Step, Visit};
use crate::protocol::write::{self, Severity};
use crate::session::Session;
use crate::stats::Tally;

pub struct FromClient<'a> {
    pub pipeline: &'a mut Pipeline,
    pub session: &'a mut Session,
    pub statements: &'a mut BackendStatements,
    pub to_client: &'a mut BytesMut,
    /// `max_prepared_statements`, 0 when named statements pass untouched.
    pub max_prepared: usize,
    pub tally: &'a mut Tally,
    /// The client sent Terminate.
    pub terminated: bool,
}

impl Visit for FromClient<'_> {
    fn wants_body(&self, tag: u8) -> bool {
        self.max_prepared > 0 && matches!(tag, b'P' | b'B' | b'D' | b'C')
    }

    fn visit(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Step {
        let extended = matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'H');
        if extended {
            self.pipeline.unsynced = true;
            if self.pipeline.discarding {
                return Step::Drop;
            }
        }
        if self.pipeline.is_empty()
            && matches!(tag, b'Q' | b'F' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S')
        {
            self.tally.request_began();
        }
        match tag {
            b'P' => self.tally.client_parses += 1,
            b'B' => self.tally.binds += 1,
            _ => {}
        }
        match tag {
            b'Q' | b'F' => self.pipeline.expect(Kind::Query, false, None),
            b'S' => {
                self.pipeline.expect(Kind::Sync, false, None);
                self.pipeline.unsynced = false;
                self.pipeline.discarding = false;
            }
            b'E' => self.pipeline.expect(Kind::Execute, false, None),
            b'H' | b'd' => {}
            b'c' | b'f' => self.pipeline.end_copy_in(),
            b'X' => {
                self.terminated = true;
                return Step::Hold;
            }
            b'P' if self.max_prepared > 0 => return self.parse(body, out),
            b'B' if self.max_prepared > 0 => return self.bind(body, out),
            b'D' if self.max_prepared > 0 => return self.describe(body, out),
            b'C' if self.max_prepared > 0 => return self.close(body),
            b'P' => {
                self.tally.server_parses += 1;
                self.pipeline.expect(Kind::Parse, false, None)
            }
            b'B' => self.pipeline.expect(Kind::Bind, false, None),
            b'D' => self.pipeline.expect(Kind::Describe, false, None),
            b'C' => self.pipeline.expect(Kind::Close, false, None),
            // PostgreSQL answers an unknown message with FATAL and closes:
            // keep the backend out of the pool.
            _ => self.pipeline.unsynced = true,
        }
        Step::Forward
    }
}

impl FromClient<'_> {
    fn parse(&mut self, body: &[u8], out: &mut BytesMut) -> Step {
        let Some(p) = prepared::parse_body(body) else {
            // Let PostgreSQL say what is wrong with it.
            self.pipeline.expect(Kind::Parse, false, None);
            return Step::Forward;
        };
        if p.name.is_empty() {
            self.tally.server_parses += 1;
            self.pipeline.expect(Kind::Parse, false, None);
            return Step::Forward;
        }
        if self.session.statements.contains_key(p.name) {
            let mut error = BytesMut::new();
            let message = format!(
                "prepared statement \"{}\" already exists",
                String::from_utf8_lossy(p.name)
            );
            write::error_response(&mut error, Severity::Error, "42P05", &message);
            self.pipeline.local(&error, None, self.to_client);
            self.pipeline.discarding = true;
            return Step::Drop;
        }
        let statement = Statement::new(p.query, p.types);
        let client_name = p.name.to_vec();
        self.session
            .statements
            .insert(client_name.clone(), statement.clone());
        let undo = Undo::Unregister {
            client_name,
            statement: statement.clone(),
        };
        if self.statements.contains(&statement.server_name) {
            self.statements.touch(&statement.server_name);
            let mut parse_complete = BytesMut::new();
            write::parse_complete(&mut parse_complete);
            self.pipeline
                .local(&parse_complete, Some(undo), self.to_client);
        } else {
            self.prepare(&statement, out);
            self.pipeline.expect(Kind::Parse, false, Some(undo));
        }
        Step::Drop
    }

    fn bind(&mut self, body: &[u8], out: &mut BytesMut) -> Step {
        let statement = prepared::bind_statement(body)
            .filter(|name| !name.is_empty())
            .and_then(|name| self.session.statements.get(name).cloned());
        // Unknown names go on as they are: PostgreSQL's own 26000 error.
        let step = match statement {
            Some(statement) => {
                self.ensure_prepared(&statement, out);
                prepared::write_bind(out, body, &statement.server_name);
                Step::Drop
            }
            _ => Step::Forward,
        };
        self.pipeline.expect(Kind::Bind, false, None);
        step
    }

    fn describe(&mut self, body: &[u8], out: &mut BytesMut) -> Step {
        let statement = match body.split_first() {
            Some((b'S', rest)) => crate::protocol::fields::cstr(rest)
                .map(|(name, _)| name)
                .filter(|name| !name.is_empty())
                .and_then(|name| self.session.statements.get(name).cloned()),
            _ => None,
        };
        let step = match statement {
            Some(statement) => {
                self.ensure_prepared(&statement, out);
                prepared::write_describe(out, &statement.server_name);
                Step::Drop
            }
            None => Step::Forward,
        };
        self.pipeline.expect(Kind::Describe, false, None);
        step
    }

    /// Closing a named statement is the client's business only: the backend
    /// keeps it for others. PostgreSQL does not mind unknown names either.
    fn close(&mut self, body: &[u8]) -> Step {
        let name = match body.split_first() {
            Some((b'S', rest)) => crate::protocol::fields::cstr(rest)
                .map(|(name, _)| name)
                .filter(|name| !name.is_empty()),
            _ => None,
        };
        let Some(name) = name else {
            self.pipeline.expect(Kind::Close, false, None);
            return Step::Forward;
        };
        let undo = self
            .session
            .statements
            .remove(name)
            .map(|statement| Undo::Restore {
                client_name: name.to_vec(),
                statement,
            });
        let mut close_complete = BytesMut::new();
        write::close_complete(&mut close_complete);
        self.pipeline.local(&close_complete, undo, self.to_client);
        Step::Drop
    }

    /// Prepares `statement` on this backend first if it lacks it; the
    /// ParseComplete is hidden from the client.
    fn ensure_prepared(&mut self, statement: &Arc<Statement>, out: &mut BytesMut) {
        if self.statements.contains(&statement.server_name) {
            self.statements.touch(&statement.server_name);
            return;
        }
        self.prepare(statement, out);
        self.pipeline
            .expect(Kind::Parse, true, Some(Undo::Unprepare(statement.clone())));
    }

    /// Writes the statement's Parse, closing the least recently used
    /// statement first if the backend holds `max_prepared` already.
    fn prepare(&mut self, statement: &Statement, out: &mut BytesMut) {
        if let Some(evicted) = self.statements.evict_if_full(self.max_prepared) {
            prepared::write_close(out, &evicted);
            self.pipeline.expect(Kind::Close, true, None);
        }
        out.extend_from_slice(&statement.parse);
        self.statements.insert(&statement.server_name);
        self.tally.server_parses += 1;
    }
}
