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

/// The longest simple query checked for `DEALLOCATE name`.
const MAX_DEALLOCATE: usize = 256;

pub struct FromClient<'a> {
    pub pipeline: &'a mut Pipeline,
    pub session: &'a mut Session,
    pub statements: &'a mut BackendStatements,
    pub to_client: &'a mut BytesMut,
    /// `max_prepared_statements`, 0 when named statements pass untouched.
    pub max_prepared: usize,
    pub tally: &'a mut Tally,
    /// The backend's current parameters.
    pub params: &'a [(String, String)],
    /// The client sent Terminate.
    pub terminated: bool,
    /// `disable_pqexec`: a simple Query is not passed on ...
    pub refuse_simple_query: bool,
    /// ... and this says one came.
    pub refused: bool,
}

impl Visit for FromClient<'_> {
    /// Named-statement messages are held whole; so are short simple
    /// queries, which may be a SQL `DEALLOCATE name` of a protocol-level
    /// statement (libpq before 17 drops statements that way).
    fn wants_body(&self, tag: u8, len: usize) -> bool {
        self.max_prepared > 0
            && (matches!(tag, b'P' | b'B' | b'D' | b'C') || (tag == b'Q' && len <= MAX_DEALLOCATE))
    }

    // Inlined into `Scanner::translate`, its one caller: a call per
    // message spilled registers (callgrind, both visitors: 90 fewer
    // instructions per transaction).
    #[inline(always)]
    fn visit(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Step {
        if self.session.resync && self.pipeline.is_empty() && !self.pipeline.unsynced {
            // A RESET put the backend back to its own defaults; the
            // client's are its startup values. (Between request cycles
            // only: never inside an extended-protocol sequence.)
            self.session.resync = false;
            if self.session.sync_query(self.params, out) {
                self.pipeline.expect(Kind::Query, true, None);
            }
        }
        let extended = matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'H');
        if extended {
            self.pipeline.unsynced = true;
            if self.pipeline.discarding {
                return Step::Drop;
            }
        }
        if matches!(tag, b'Q' | b'F' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S') {
            self.tally.request_began();
        }
        match tag {
            b'P' => self.tally.client_parses += 1,
            b'B' => self.tally.binds += 1,
            _ => {}
        }
        match tag {
            b'Q' if self.refuse_simple_query => {
                self.refused = true;
                return Step::Hold;
            }
            b'Q' if !body.is_empty() && self.deallocate(body) => return Step::Drop,
            b'Q' if is_set_default(body) => self.pipeline.set_default = true,
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
            if is_set_default(p.query) {
                self.pipeline.set_default = true;
            }
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
        if is_set_default(p.query) {
            self.pipeline.set_default = true;
        }
        let statement = Statement::new(p.query, p.types);
        let client_name = p.name.to_vec();
        self.session
            .statements
            .insert(client_name.clone(), statement.clone());
        let on_backend = self.statements.contains(&statement.server_name);
        let undo = Undo::Unregister {
            client_name,
            statement: statement.clone(),
            // A Parse pgdyno sends that fails leaves nothing on the backend.
            unprepare: !on_backend,
        };
        if on_backend {
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

    /// `DEALLOCATE [PREPARE] name` of one of the client's protocol-level
    /// statements: forgotten and answered here (the backend keeps it for
    /// others). Other names go to PostgreSQL (SQL-level PREPAREs, errors).
    fn deallocate(&mut self, body: &[u8]) -> bool {
        let Some(name) = deallocate_target(body) else {
            return false;
        };
        if self.pipeline.status == crate::protocol::TransactionStatus::Failed
            || !self.session.statements.contains_key(name.as_bytes())
        {
            return false;
        }
        let statement = self.session.statements.remove(name.as_bytes());
        let undo = statement.map(|statement| Undo::Restore {
            client_name: name.clone().into_bytes(),
            statement,
        });
        let mut reply = BytesMut::new();
        write::command_complete(&mut reply, "DEALLOCATE");
        write::ready_for_query(&mut reply, self.pipeline.status);
        self.pipeline.local(&reply, undo, self.to_client);
        true
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

/// Whether SQL text (NUL-terminated or not) is `SET [SESSION] name
/// {TO | =} DEFAULT`, which PostgreSQL treats as RESET.
fn is_set_default(text: &[u8]) -> bool {
    // Cheap refusals first: this runs on every short query. (`| 0x20`
    // folds case and maps no other byte onto a lowercase letter.)
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    if !matches!(text[start..], [s, e, t, ..] if [s | 0x20, e | 0x20, t | 0x20] == *b"set") {
        return false;
    }
    let text = crate::protocol::fields::cstr(text).map_or(text, |(t, _)| t);
    if text.len() > MAX_DEALLOCATE {
        return false;
    }
    let Ok(text) = std::str::from_utf8(text) else {
        return false;
    };
    let words: Vec<&str> = text
        .trim()
        .trim_end_matches(';')
        .split(|c: char| c.is_whitespace() || c == '=')
        .filter(|w| !w.is_empty())
        .collect();
    matches!(words.first(), Some(w) if w.eq_ignore_ascii_case("set"))
        && matches!(words.last(), Some(w) if w.eq_ignore_ascii_case("default"))
        && !words.iter().any(|w| w.eq_ignore_ascii_case("local"))
}

/// The statement name of `DEALLOCATE [PREPARE] name[;]` (a double-quoted
/// name keeps its case; a bare one is folded to lower case, as SQL does).
fn deallocate_target(body: &[u8]) -> Option<String> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if !body[start..].get(..10)?.eq_ignore_ascii_case(b"deallocate") {
        return None;
    }
    let text = std::str::from_utf8(crate::protocol::fields::cstr(body)?.0).ok()?;
    let text = text.trim().trim_end_matches(';').trim_end();
    let mut words = text.splitn(2, char::is_whitespace);
    if !words.next()?.eq_ignore_ascii_case("deallocate") {
        return None;
    }
    let mut rest = words.next()?.trim_start();
    if let Some((first, after)) = rest.split_once(char::is_whitespace) {
        if first.eq_ignore_ascii_case("prepare") {
            rest = after.trim_start();
        }
    }
    if let Some(quoted) = rest.strip_prefix('"') {
        let name = quoted.strip_suffix('"')?;
        return (!name.contains('"')).then(|| name.to_owned());
    }
    if rest.is_empty() || rest.eq_ignore_ascii_case("all") || rest.contains(char::is_whitespace) {
        return None;
    }
    Some(rest.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::deallocate_target;

    #[test]
    fn deallocate_names() {
        let t = |s: &str| deallocate_target(format!("{s}\0").as_bytes());
        assert_eq!(t("DEALLOCATE _pg3_0"), Some("_pg3_0".into()));
        assert_eq!(t("deallocate prepare S_1;"), Some("s_1".into()));
        assert_eq!(t("DEALLOCATE \"S_1\""), Some("S_1".into()));
        assert_eq!(t("DEALLOCATE ALL"), None);
        assert_eq!(t("DEALLOCATE PREPARE ALL"), None);
        assert_eq!(t("SELECT 1"), None);
        assert_eq!(t("DEALLOCATE"), None);
    }

    #[test]
    fn set_to_default() {
        assert!(super::is_set_default(b"SET TimeZone TO DEFAULT\0"));
        assert!(super::is_set_default(b"set session timezone=default;"));
        assert!(!super::is_set_default(b"SET LOCAL TimeZone TO DEFAULT"));
        assert!(!super::is_set_default(b"SET TimeZone TO 'UTC'"));
        assert!(!super::is_set_default(b"SELECT default"));
        assert!(super::is_set_default(b"\n  sEt x TO default"));
        assert!(!super::is_set_default(b"SE"));
        assert!(
            !super::is_set_default(b"3ET x TO default"),
            "only letters fold"
        );
    }
}
