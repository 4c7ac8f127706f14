//! Named prepared statements across multiplexed backends.
//!
//! A client's `Parse` of statement `S_1` becomes, on whichever backend the
//! client holds, a statement named after a hash of its text and parameter
//! types (`__pgdyno_<hash>`): the same query prepared by any client has the
//! same backend name, so a backend prepares it once for all of them. The
//! client keeps its own names ([`ClientStatements`]); each backend keeps an
//! LRU of the names it has prepared ([`BackendStatements`]), bounded by
//! `max_prepared_statements`. The relay renames, injects and swallows;
//! this file holds the maps and builds the messages.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::protocol::fields;
use crate::protocol::write::{message, put_cstr};

/// A statement as pgdyno prepares it on backends.
#[derive(Debug)]
pub struct Statement {
    /// `__pgdyno_` + 32 hex digits of SHA-256(query, parameter types).
    pub server_name: String,
    /// The whole Parse message under `server_name`, ready to inject.
    pub parse: Bytes,
}

/// The parts of a Parse message body.
pub struct ParseBody<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    /// Int16 count and the Int32 type OIDs, as sent.
    pub types: &'a [u8],
}

/// Splits a Parse body; `None` if it is malformed.
pub fn parse_body(body: &[u8]) -> Option<ParseBody<'_>> {
    let (name, rest) = fields::cstr(body)?;
    let (query, types) = fields::cstr(rest)?;
    let count = i16::from_be_bytes(types.get(..2)?.try_into().ok()?);
    if count < 0 || types.len() != 2 + 4 * count as usize {
        return None;
    }
    Some(ParseBody { name, query, types })
}

impl Statement {
    pub fn new(query: &[u8], types: &[u8]) -> Arc<Statement> {
        let mut h = Sha256::new();
        h.update((query.len() as u64).to_be_bytes());
        h.update(query);
        h.update(types);
        let digest = h.finalize();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut server_name = String::with_capacity(9 + 32);
        server_name.push_str("__pgdyno_");
        for b in &digest[..16] {
            server_name.push(HEX[(b >> 4) as usize] as char);
            server_name.push(HEX[(b & 15) as usize] as char);
        }
        let mut parse = BytesMut::with_capacity(query.len() + types.len() + 64);
        message(&mut parse, b'P', |b| {
            put_cstr(b, server_name.as_bytes());
            put_cstr(b, query);
            b.put_slice(types);
        });
        Arc::new(Statement {
            server_name,
            parse: parse.freeze(),
        })
    }
}

/// Bind with the statement name replaced: `portal, statement, rest`. A
/// body without the two names (see [`bind_statement`]) is copied as it is.
pub fn write_bind(out: &mut BytesMut, body: &[u8], server_name: &str) {
    let split = fields::cstr(body).and_then(|(portal, rest)| Some((portal, fields::cstr(rest)?.1)));
    message(out, b'B', |b| match split {
        Some((portal, rest)) => {
            put_cstr(b, portal);
            put_cstr(b, server_name.as_bytes());
            b.put_slice(rest);
        }
        None => b.put_slice(body),
    });
}

/// Describe of a statement, under its backend name.
pub fn write_describe(out: &mut BytesMut, server_name: &str) {
    message(out, b'D', |b| {
        b.put_u8(b'S');
        put_cstr(b, server_name.as_bytes());
    });
}

/// Close of a statement, under its backend name.
pub fn write_close(out: &mut BytesMut, server_name: &str) {
    message(out, b'C', |b| {
        b.put_u8(b'S');
        put_cstr(b, server_name.as_bytes());
    });
}

/// The Bind body's statement name.
pub fn bind_statement(body: &[u8]) -> Option<&[u8]> {
    let (_, rest) = fields::cstr(body)?;
    Some(fields::cstr(rest)?.0)
}

/// A client's statements by the names it gave them.
pub type ClientStatements = HashMap<Vec<u8>, Arc<Statement>>;

/// The statements prepared on one backend, least recently used first out.
#[derive(Debug, Default)]
pub struct BackendStatements {
    tick: u64,
    names: HashMap<String, u64>,
}

impl BackendStatements {
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// Marks a statement used now.
    pub fn touch(&mut self, name: &str) {
        self.tick += 1;
        if let Some(t) = self.names.get_mut(name) {
            *t = self.tick;
        }
    }

    /// Records a statement prepared on the backend.
    pub fn insert(&mut self, name: &str) {
        self.tick += 1;
        self.names.insert(name.to_owned(), self.tick);
    }

    /// When `max` statements are prepared already, forgets the least
    /// recently used and returns its name, for the caller to close.
    pub fn evict_if_full(&mut self, max: usize) -> Option<String> {
        if self.names.len() < max.max(1) {
            return None;
        }
        let oldest = self
            .names
            .iter()
            .min_by_key(|(_, &t)| t)
            .map(|(n, _)| n.clone())?;
        self.names.remove(&oldest);
        Some(oldest)
    }

    pub fn remove(&mut self, name: &str) {
        self.names.remove(name);
    }

    /// DEALLOCATE ALL / DISCARD ALL ran on the backend.
    pub fn clear(&mut self) {
        self.names.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_names_are_the_first_16_bytes_of_sha256_in_hex() {
        let s = Statement::new(b"SELECT $1", &[0, 1, 0, 0, 0, 23]);
        let mut h = Sha256::new();
        h.update(9u64.to_be_bytes());
        h.update(b"SELECT $1");
        h.update([0, 1, 0, 0, 0, 23]);
        let hex: String = h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(s.server_name, format!("__pgdyno_{hex}"));
    }

    #[test]
    fn same_text_same_name_and_types_matter() {
        let a = Statement::new(b"select $1", &[0, 1, 0, 0, 0, 23]);
        let b = Statement::new(b"select $1", &[0, 1, 0, 0, 0, 23]);
        let c = Statement::new(b"select $1", &[0, 1, 0, 0, 0, 25]);
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
        assert!(a.server_name.len() < 64);
        let body = &a.parse[5..];
        let p = parse_body(body).unwrap();
        assert_eq!(p.name, a.server_name.as_bytes());
        assert_eq!(p.query, b"select $1");
    }

    #[test]
    fn malformed_parse_bodies() {
        assert!(parse_body(b"s\0select 1\0\0\0").is_some());
        assert!(parse_body(b"s\0select 1\0\0\x01").is_none());
        assert!(parse_body(b"s\0select 1\0\xff\xff").is_none());
        assert!(parse_body(b"s\0select 1").is_none());
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut s = BackendStatements::default();
        s.insert("a");
        assert_eq!(s.evict_if_full(2), None);
        s.insert("b");
        s.touch("a");
        assert_eq!(s.evict_if_full(2), Some("b".to_owned()));
        s.insert("c");
        assert!(s.contains("a") && s.contains("c") && !s.contains("b"));
    }

    #[test]
    fn bind_rename() {
        let mut out = BytesMut::new();
        write_bind(&mut out, b"p\0S_1\0rest", "__pgdyno_x");
        assert_eq!(&out[5..], b"p\0__pgdyno_x\0rest");
        assert_eq!(bind_statement(b"p\0S_1\0rest"), Some(&b"S_1"[..]));
    }
}
