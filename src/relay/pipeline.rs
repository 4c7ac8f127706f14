//! What the backend owes the client: one entry per request message that
//! earns a reply, in order, plus replies pgdyno answers itself.
//!
//! PostgreSQL answers extended-protocol messages strictly in order, each
//! with a known closing message (ParseComplete, BindComplete, ...,
//! ReadyForQuery). Knowing which request a backend message closes lets the
//! relay hide the replies to messages it injected, slot its own replies in
//! at the right place, and know when nothing is outstanding.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::prepared::{BackendStatements, Statement};
use crate::protocol::TransactionStatus;
use crate::session::Session;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    /// A simple Query or a FunctionCall: everything up to ReadyForQuery.
    Query,
}

impl Kind {
    /// Whether a backend message with `tag` is the last of this reply.
    pub fn closed_by(self, tag: u8) -> bool {
        matches!(
            (self, tag),
            (Kind::Parse, b'1')
                | (Kind::Bind, b'2')
                | (Kind::Close, b'3')
                | (Kind::Describe, b'T' | b'n')
                | (Kind::Execute, b'C' | b'I' | b's')
                | (Kind::Sync | Kind::Query, b'Z')
        )
    }
}

/// What to take back if a request never takes effect (it failed, or an
/// earlier error made PostgreSQL skip it).
#[derive(Debug)]
pub enum Undo {
    /// A client Parse: forget the client's name, and the backend's copy
    /// if this Parse was the one to make it.
    Unregister {
        client_name: Vec<u8>,
        statement: Arc<Statement>,
        unprepare: bool,
    },
    /// A Parse pgdyno injected: the backend does not have it after all.
    Unprepare(Arc<Statement>),
    /// A client Close answered locally: the statement is the client's again.
    Restore {
        client_name: Vec<u8>,
        statement: Arc<Statement>,
    },
}

/// One owed reply. Sixteen bytes: a request queues one and its reply pops
/// it, several per transaction, while undos and local replies are rare and
/// boxed.
#[derive(Debug)]
enum Entry {
    Reply {
        kind: Kind,
        /// The request was pgdyno's: its reply is not the client's business.
        hidden: bool,
        undo: Option<Box<Undo>>,
    },
    /// A reply pgdyno makes itself, due once everything before it is answered.
    Local(Box<Local>),
}

#[derive(Debug)]
struct Local {
    bytes: Bytes,
    undo: Option<Undo>,
}

#[derive(Debug)]
pub struct Pipeline {
    entries: VecDeque<Entry>,
    /// Extended-protocol messages were sent since the last Sync.
    pub unsynced: bool,
    /// After an error PostgreSQL skips extended messages until Sync; so
    /// does pgdyno (they must not take effect here either).
    pub discarding: bool,
    pub status: TransactionStatus,
    /// The backend is in COPY FROM STDIN for the request at the head.
    pub copy_in: bool,
    /// A `SET ... TO DEFAULT` is among the requests under way: its
    /// CommandComplete says SET, but it works as RESET.
    pub set_default: bool,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline {
            entries: VecDeque::new(),
            unsynced: false,
            discarding: false,
            status: TransactionStatus::Idle,
            copy_in: false,
            set_default: false,
        }
    }
}

impl Pipeline {
    /// As new, but keeping the queue (and its allocation:
    /// a backend's pipeline serves one bound stretch after another).
    pub fn restart(&mut self) {
        let Pipeline {
            entries,
            unsynced,
            discarding,
            status,
            copy_in,
            set_default,
        } = self;
        entries.clear();
        (*unsynced, *discarding, *copy_in, *set_default) = (false, false, false, false);
        *status = TransactionStatus::Idle;
    }

    /// Nothing owed, nothing waiting for a Sync, no transaction open.
    pub fn idle(&self) -> bool {
        self.entries.is_empty() && !self.unsynced && self.status == TransactionStatus::Idle
    }

    /// Nothing owed: a request now starts a new query cycle.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn expect(&mut self, kind: Kind, hidden: bool, undo: Option<Undo>) {
        self.entries.push_back(Entry::Reply {
            kind,
            hidden,
            undo: undo.map(Box::new),
        });
    }

    /// A locally made reply: written now if nothing is owed before it.
    pub fn local(&mut self, bytes: &[u8], undo: Option<Undo>, to_client: &mut BytesMut) {
        if self.entries.is_empty() {
            to_client.extend_from_slice(bytes);
        } else {
            self.entries.push_back(Entry::Local(Box::new(Local {
                bytes: Bytes::copy_from_slice(bytes),
                undo,
            })));
        }
    }

    /// The request whose reply is under way: its kind and whether hidden.
    pub fn head(&self) -> Option<(Kind, bool)> {
        match self.entries.front() {
            Some(Entry::Reply { kind, hidden, .. }) => Some((*kind, *hidden)),
            _ => None,
        }
    }

    /// A backend message closed the head reply (see [`Kind::closed_by`]):
    /// pops it, then writes out local replies now due.
    pub fn close_head(&mut self, to_client: &mut BytesMut) {
        self.entries.pop_front();
        self.flush_locals(to_client);
    }

    /// [`Pipeline::close_head`] if a backend message with `tag` closes it.
    #[cfg(test)]
    fn close_head_if(&mut self, tag: u8, to_client: &mut BytesMut) {
        if self.head().is_some_and(|(kind, _)| kind.closed_by(tag)) {
            self.close_head(to_client);
        }
    }

    fn flush_locals(&mut self, to_client: &mut BytesMut) {
        while let Some(Entry::Local(_)) = self.entries.front() {
            if let Some(Entry::Local(local)) = self.entries.pop_front() {
                to_client.extend_from_slice(&local.bytes);
            }
        }
    }

    /// An ErrorResponse to an extended-protocol request: PostgreSQL skips
    /// everything up to the next Sync, so those replies will never come.
    pub fn fail_until_sync(&mut self, session: &mut Session, statements: &mut BackendStatements) {
        if self.copy_in {
            // Syncs sent during COPY FROM STDIN were ignored, not answered.
            self.drop_syncs_after_head();
            self.copy_in = false;
        }
        while let Some(entry) = self.entries.front() {
            if matches!(
                entry,
                Entry::Reply {
                    kind: Kind::Sync,
                    ..
                }
            ) {
                return;
            }
            let undo = match self.entries.pop_front() {
                Some(Entry::Reply { undo, .. }) => undo.map(|u| *u),
                Some(Entry::Local(local)) => local.undo,
                None => None,
            };
            if let Some(undo) = undo {
                apply(undo, session, statements);
            }
        }
        // The Sync is still to come: skip what the client sends until then.
        self.discarding = true;
    }

    /// The client ended a COPY FROM STDIN: the Syncs it sent during the
    /// copy were ignored by PostgreSQL and earn no ReadyForQuery.
    pub fn end_copy_in(&mut self) {
        if self.copy_in {
            self.drop_syncs_after_head();
            self.copy_in = false;
        }
    }

    fn drop_syncs_after_head(&mut self) {
        let mut first = true;
        self.entries.retain(|e| {
            let keep = first
                || !matches!(
                    e,
                    Entry::Reply {
                        kind: Kind::Sync,
                        ..
                    }
                );
            first = false;
            keep
        });
    }
}

fn apply(undo: Undo, session: &mut Session, statements: &mut BackendStatements) {
    match undo {
        Undo::Unregister {
            client_name,
            statement,
            unprepare,
        } => {
            if unprepare {
                statements.remove(&statement.server_name);
            }
            if session
                .statements
                .get(&client_name)
                .is_some_and(|s| Arc::ptr_eq(s, &statement))
            {
                session.statements.remove(&client_name);
            }
        }
        Undo::Unprepare(statement) => statements.remove(&statement.server_name),
        Undo::Restore {
            client_name,
            statement,
        } => {
            session.statements.entry(client_name).or_insert(statement);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queued and popped several times per transaction: kept small.
    #[test]
    fn an_owed_reply_is_two_words() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }

    #[test]
    fn a_restarted_pipeline_is_new_but_keeps_its_queue() {
        let mut p = Pipeline::default();
        p.expect(Kind::Query, false, None);
        p.status = TransactionStatus::InTransaction;
        p.unsynced = true;
        p.restart();
        assert!(p.entries.capacity() > 0, "the queue was not kept");
        assert!(p.entries.is_empty() && p.idle() && !p.discarding);
    }

    #[test]
    fn locals_wait_for_earlier_replies() {
        let mut p = Pipeline::default();
        let mut out = BytesMut::new();
        p.local(b"1", None, &mut out);
        assert_eq!(&out[..], b"1");
        p.expect(Kind::Bind, false, None);
        p.local(b"3", None, &mut out);
        assert_eq!(&out[..], b"1");
        p.close_head_if(b'D', &mut out);
        assert_eq!(&out[..], b"1");
        p.close_head_if(b'2', &mut out);
        assert_eq!(&out[..], b"13");
        assert!(p.entries.is_empty());
    }

    #[test]
    fn an_error_skips_to_sync_and_undoes() {
        let mut p = Pipeline::default();
        let mut session = Session::default();
        let mut backend = BackendStatements::default();
        let statement = Statement::new(b"select 1", &[0, 0]);
        session.statements.insert(b"s1".to_vec(), statement.clone());
        let mut out = BytesMut::new();
        p.expect(Kind::Bind, false, None);
        p.local(
            b"1",
            Some(Undo::Unregister {
                client_name: b"s1".to_vec(),
                statement,
                unprepare: false,
            }),
            &mut out,
        );
        p.expect(Kind::Execute, false, None);
        p.expect(Kind::Sync, false, None);
        p.fail_until_sync(&mut session, &mut backend);
        assert!(session.statements.is_empty());
        assert_eq!(p.head(), Some((Kind::Sync, false)));
        assert!(!p.discarding);
        assert!(out.is_empty());
    }

    #[test]
    fn syncs_during_copy_in_earn_nothing() {
        let mut p = Pipeline::default();
        p.expect(Kind::Execute, false, None);
        p.expect(Kind::Sync, false, None);
        p.copy_in = true;
        p.end_copy_in();
        assert_eq!(p.entries.len(), 1);
        p.expect(Kind::Sync, false, None);
        let mut out = BytesMut::new();
        p.close_head_if(b'C', &mut out);
        p.close_head_if(b'Z', &mut out);
        assert!(p.entries.is_empty());
    }
}
