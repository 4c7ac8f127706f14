//! What a client believes its session is, whichever backend it is on: its
//! session parameters and its named prepared statements.
//!
//! When a client is bound to a backend whose parameters differ, the relay
//! sends the `SET`s returned by [`Session::sync_query`] first (and hides
//! their replies), so the client always sees its own settings.

use std::fmt::Write;
use std::sync::Arc;

use bytes::BytesMut;

use crate::prepared::ClientStatements;

/// Parameters PgBouncer tracks for every client.
pub const TRACKED: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "application_name",
];

/// PostgreSQL's spelling of the parameters it reports (GUC_REPORT), so a
/// `timezone` from a startup packet matches the `TimeZone` it reports.
const REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "in_hot_standby",
    "integer_datetimes",
    "IntervalStyle",
    "is_superuser",
    "scram_iterations",
    "search_path",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
];

/// PostgreSQL's spelling of a parameter name.
pub fn canonical(name: &str) -> String {
    REPORTED
        .iter()
        .find(|r| r.eq_ignore_ascii_case(name))
        .map(|r| (*r).to_owned())
        .unwrap_or_else(|| name.to_owned())
}

/// Whether pgdyno keeps this parameter per client.
pub fn is_tracked(name: &str, extra: &[String]) -> bool {
    TRACKED.iter().any(|t| t.eq_ignore_ascii_case(name))
        || extra.iter().any(|t| t.eq_ignore_ascii_case(name))
}

/// A client's tracked parameters. Clients with the same values share one
/// list (see [`crate::pool::Pool::shared_params`]): it costs them no memory
/// each, and a backend that matched it once is known to match it again
/// without comparing (see [`Session::synced`]). Changed copy-on-write.
pub type Params = Arc<ParamList>;
pub type ParamList = Vec<(String, String)>;

#[derive(Debug, Default)]
pub struct Session {
    /// Tracked parameters as the client set them (canonical names).
    pub params: Params,
    pub statements: ClientStatements,
    /// Tracked parameters from the startup packet: what RESET returns to.
    pub startup: Vec<(String, String)>,
    /// A RESET changed the backend's parameters away from the client's:
    /// send the SETs before the client's next request.
    pub resync: bool,
}

impl Session {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Changes a parameter; the list is copied first if other clients
    /// or backends share it.
    pub fn set_param(&mut self, name: &str, value: &str) {
        if self.param(name) == Some(value) {
            return;
        }
        crate::backend::set_param(Arc::make_mut(&mut self.params), name, value);
    }

    /// Whether a backend whose [`crate::backend::Backend::synced`] is
    /// `synced` already has this client's parameters.
    pub fn synced(&self, synced: &Option<Params>) -> bool {
        synced
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, &self.params))
    }

    /// Appends to `out` a simple Query of the `SET`s that make `backend`'s
    /// parameters this client's; returns false (appending nothing) when
    /// they already match.
    pub fn sync_query(&self, backend: &[(String, String)], out: &mut BytesMut) -> bool {
        let mut sql = String::new();
        for (name, value) in self.params.iter() {
            let current = backend
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str());
            if current != Some(value.as_str()) {
                let _ = write!(
                    sql,
                    "SET {} TO {};",
                    quote_ident(name),
                    quote_literal(value)
                );
            }
        }
        if sql.is_empty() {
            return false;
        }
        postgres_protocol::message::frontend::query(&sql, out).is_ok()
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Dollar quoting reads the same whatever standard_conforming_strings says.
fn quote_literal(value: &str) -> String {
    if value.contains("$pgdyno$") {
        format!("'{}'", value.replace('\'', "''"))
    } else {
        format!("$pgdyno${value}$pgdyno$")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_only_what_differs() {
        let mut s = Session::default();
        s.set_param("TimeZone", "UTC");
        s.set_param("application_name", "it's");
        let backend = vec![
            ("TimeZone".to_owned(), "UTC".to_owned()),
            ("application_name".to_owned(), "".to_owned()),
        ];
        let mut out = BytesMut::new();
        assert!(s.sync_query(&backend, &mut out));
        let text = String::from_utf8_lossy(&out[5..]).to_string();
        assert_eq!(text, "SET \"application_name\" TO $pgdyno$it's$pgdyno$;\0");
        let mut same = BytesMut::new();
        s.set_param("application_name", "");
        assert!(!s.sync_query(&backend, &mut same));
        assert!(same.is_empty());
    }

    #[test]
    fn canonical_names() {
        assert_eq!(canonical("timezone"), "TimeZone");
        assert_eq!(canonical("datestyle"), "DateStyle");
        assert_eq!(canonical("my.setting"), "my.setting");
        assert!(is_tracked("TIMEZONE", &[]));
        assert!(is_tracked("intervalstyle", &["IntervalStyle".into()]));
        assert!(!is_tracked("search_path", &[]));
    }
}
