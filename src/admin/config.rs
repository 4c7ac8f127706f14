//! SHOW CONFIG: every setting with the value in force, its default, and
//! whether RELOAD can change it. Secrets (passwords in upstream URLs, PEM
//! keys given as text) are never shown.

use std::path::PathBuf;
use std::time::Duration;

use super::rows::{v, Table, Type::Text};
use crate::config::tls::{Pem, Protocols};
use crate::config::{Config, SETTINGS};
use crate::pooler::Pooler;

/// Settings that RELOAD leaves as they were (they take a restart):
/// sockets and threads made at startup, pool sizes `auto` chose then, the
/// login throttle, the stats timer, logging, and the per-user backend
/// limits, which pools take when they are made.
const RESTART: &[&str] = &[
    "worker_threads",
    "listen",
    "listen_addr",
    "listen_port",
    "listen_backlog",
    "so_reuseport",
    "metrics_listen",
    "unix_socket_dir",
    "unix_socket_mode",
    "unix_socket_group",
    "fleet_size",
    "pool_size_headroom",
    "peer_id",
    "auth_failure_limit",
    "auth_failure_block_time",
    "auth_failure_delay",
    "stats_period",
    "log_format",
    "log_level",
    "logfile",
    "pidfile",
];

pub fn table(pooler: &Pooler) -> Table {
    let mut t = Table::new(&[
        ("key", Text),
        ("value", Text),
        ("default", Text),
        ("changeable", Text),
    ]);
    let c = &pooler.config();
    for s in SETTINGS {
        let changeable = if RESTART.contains(&s.name) {
            "no"
        } else {
            "yes"
        };
        let value = shown(c, s.name).unwrap_or_default();
        t.row(vec![v(s.name), v(value), v(s.default), v(changeable)]);
    }
    t
}

/// A setting's value as the config holds it, in the form it is written.
/// `None` only for a name that is not a setting.
fn shown(c: &Config, name: &str) -> Option<String> {
    let secs = |d: Duration| format!("{}", d.as_secs_f64());
    let opt = |d: Option<Duration>| d.map(secs).unwrap_or_else(|| "0".into());
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let pem_file = |p: &Option<Pem>| match p {
        Some(Pem::File(f)) => f.display().to_string(),
        _ => String::new(),
    };
    // PEM text is shown as set or not, never printed (keys are secret).
    let pem_text = |p: &Option<Pem>| match p {
        Some(Pem::Text { .. }) => "(set)".to_owned(),
        _ => String::new(),
    };
    let protocols = |p: Protocols| {
        match (p.tls12, p.tls13) {
            (true, true) => "secure",
            (true, false) => "tlsv1.2",
            _ => "tlsv1.3",
        }
        .to_owned()
    };
    Some(match name {
        "worker_threads" => c.worker_threads.to_string(),
        "listen" => c.listen.to_string(),
        "listen_addr" => c.listen_parts.0.clone(),
        "listen_port" => c.listen_parts.1.clone(),
        "listen_backlog" => c.listen_backlog.to_string(),
        "so_reuseport" => c.so_reuseport.to_string(),
        "peer_id" => c.peer_id.to_string(),
        "tcp_keepalive" => c.tcp.keepalive.to_string(),
        "tcp_keepidle" => opt(c.tcp.keepidle),
        "tcp_keepintvl" => opt(c.tcp.keepintvl),
        "tcp_keepcnt" => c.tcp.keepcnt.unwrap_or(0).to_string(),
        "tcp_user_timeout" => c.tcp.user_timeout.map_or(0, |d| d.as_millis()).to_string(),
        "tcp_socket_buffer" => c.tcp.socket_buffer.unwrap_or(0).to_string(),
        "metrics_listen" => c.metrics_listen.map(|a| a.to_string()).unwrap_or_default(),
        "unix_socket_dir" => path(&c.unix_socket_dir),
        "unix_socket_mode" => format!("{:04o}", c.unix_socket_mode),
        "unix_socket_group" => c.unix_socket_group.clone().unwrap_or_default(),
        // Never show secrets (upstream URLs carry passwords).
        "upstream" => String::new(),
        "pool_mode" => c.pool_mode.name().into(),
        "default_pool_size" if c.auto_pool_size => "auto".into(),
        "default_pool_size" => c.default_pool_size.to_string(),
        "fleet_size" => c.fleet_size.to_string(),
        "pool_size_headroom" => c.pool_size_headroom.to_string(),
        "min_pool_size" => c.min_pool_size.to_string(),
        "reserve_pool_size" => c.reserve_pool_size.to_string(),
        "reserve_pool_timeout" => secs(c.reserve_pool_timeout),
        "max_client_conn" => c.max_client_conn.to_string(),
        "max_db_connections" => c.max_db_connections.to_string(),
        "max_user_connections" => c.max_user_connections.to_string(),
        "max_db_client_connections" => c.max_db_client_connections.to_string(),
        "max_user_client_connections" => c.max_user_client_connections.to_string(),
        "query_wait_timeout" => opt(c.query_wait_timeout),
        "client_login_timeout" => secs(c.client_login_timeout),
        "server_connect_timeout" => secs(c.server_connect_timeout),
        "client_idle_timeout" => opt(c.timeouts.client_idle),
        "idle_transaction_timeout" => opt(c.timeouts.idle_transaction),
        "query_timeout" => opt(c.timeouts.query),
        "transaction_timeout" => opt(c.timeouts.transaction),
        "server_check_delay" => secs(c.server_check_delay),
        "server_check_query" => c.server_check_query.clone(),
        "server_login_retry" => secs(c.server_login_retry),
        "server_idle_timeout" => opt(c.server_idle_timeout),
        "autodb_idle_timeout" => opt(c.autodb_idle_timeout),
        "server_lifetime" => opt(c.server_lifetime),
        "shutdown_timeout" => secs(c.shutdown_timeout),
        "server_reset_query" => c.server_reset_query.clone(),
        "connect_query" => c.connect_query.clone(),
        "server_reset_query_always" => c.server_reset_query_always.to_string(),
        "server_round_robin" => c.server_round_robin.to_string(),
        "server_fast_close" => c.server_fast_close.to_string(),
        "cancel_wait_timeout" => opt(c.cancel_wait_timeout),
        "disable_pqexec" => c.disable_pqexec.to_string(),
        "application_name_add_host" => c.application_name_add_host.to_string(),
        "client_tls_sslmode" => c.client_tls.sslmode.name().into(),
        "client_tls_cert_file" => pem_file(&c.client_tls.cert),
        "client_tls_key_file" => pem_file(&c.client_tls.key),
        "client_tls_ca_file" => pem_file(&c.client_tls.ca),
        "client_tls_cert_pem" => pem_text(&c.client_tls.cert),
        "client_tls_key_pem" => pem_text(&c.client_tls.key),
        "client_tls_ca_pem" => pem_text(&c.client_tls.ca),
        "client_tls_protocols" => protocols(c.client_tls.protocols),
        "client_tls_ciphers" => c.client_tls.ciphers.text.clone(),
        "server_tls_sslmode" => c.server_tls.sslmode.name().into(),
        "server_tls_ca_file" => path(&c.server_tls.ca_file),
        "server_tls_cert_file" => path(&c.server_tls.cert_file),
        "server_tls_key_file" => path(&c.server_tls.key_file),
        "server_tls_protocols" => protocols(c.server_tls.protocols),
        "server_tls_ciphers" => c.server_tls.ciphers.text.clone(),
        "auth_type" => c.auth_type.name().into(),
        "auth_file" => path(&c.auth_file),
        "auth_hba_file" => path(&c.auth_hba_file),
        "auth_ident_file" => path(&c.auth_ident_file),
        "auth_user" => c.auth_user.clone(),
        "auth_query" => c.auth_query.clone(),
        "auth_dbname" => c.auth_dbname.clone(),
        "auth_failure_limit" => c.auth_failure_limit.to_string(),
        "auth_failure_block_time" => secs(c.auth_failure_block_time),
        "auth_failure_delay" => secs(c.auth_failure_delay),
        "ignore_startup_parameters" => c.ignore_startup_parameters.join(","),
        "max_prepared_statements" => c.max_prepared_statements.to_string(),
        "scram_iterations" => c.scram_iterations.to_string(),
        "track_extra_parameters" => c.track_extra_parameters.join(","),
        "max_packet_size" => c.max_packet_size.to_string(),
        "admin_users" => c.admin_users.join(","),
        "stats_users" => c.stats_users.join(","),
        "stats_period" => secs(c.stats_period),
        "log_format" => c.log_format.name().into(),
        "log_level" => c.log_level.clone(),
        "logfile" => path(&c.logfile),
        "pidfile" => path(&c.pidfile),
        "log_connections" => c.log_connections.to_string(),
        "log_disconnections" => c.log_disconnections.to_string(),
        "log_pooler_errors" => c.log_pooler_errors.to_string(),
        "log_stats" => c.log_stats.to_string(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;

    fn load(flags: &[(&str, &str)]) -> Config {
        let mut all = vec![("upstream", "postgres://u:secret@127.0.0.1:5432/db")];
        all.extend_from_slice(flags);
        let flags = all
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&Sources {
            flags,
            ..Sources::default()
        })
        .unwrap()
    }

    /// Every setting has its own line in the match: a new setting without
    /// one would show nothing.
    #[test]
    fn every_setting_is_shown() {
        let c = load(&[]);
        let missing: Vec<_> = SETTINGS
            .iter()
            .filter(|s| shown(&c, s.name).is_none())
            .map(|s| s.name)
            .collect();
        assert!(missing.is_empty(), "not in SHOW CONFIG: {missing:?}");
    }

    /// On defaults, each value reads as its default is written (numbers
    /// compared as numbers: "120" and "120" but also "0777" and "0777").
    #[test]
    fn defaults_show_as_their_defaults() {
        let c = load(&[]);
        for s in SETTINGS.iter().filter(|s| s.name != "upstream") {
            let value = shown(&c, s.name).unwrap();
            let same = value == s.default
                || matches!(
                    (value.parse::<f64>(), s.default.parse::<f64>()),
                    (Ok(a), Ok(b)) if a == b
                );
            assert!(same, "{}: shows {value:?}, default {:?}", s.name, s.default);
        }
    }

    /// A value given shows as given, not as the default.
    #[test]
    fn set_values_show() {
        let c = load(&[
            ("tcp_keepidle", "30"),
            ("tcp_user_timeout", "2500"),
            ("unix_socket_mode", "0770"),
            ("log_connections", "false"),
            ("query_timeout", "2min"),
            ("auth_type", "md5"),
        ]);
        for (name, want) in [
            ("tcp_keepidle", "30"),
            ("tcp_user_timeout", "2500"),
            ("unix_socket_mode", "0770"),
            ("log_connections", "false"),
            ("query_timeout", "120"),
            ("auth_type", "md5"),
            ("upstream", ""),
        ] {
            assert_eq!(shown(&c, name).unwrap(), want, "{name}");
        }
    }
}
