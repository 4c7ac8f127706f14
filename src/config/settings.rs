//! The table of every setting: name, default, and what it means.
//!
//! One table serves the TOML file, `PGDYNO_*` env vars, `--flags`, `--help`
//! and (later) `SHOW CONFIG`, so a setting exists in all of them or none.
//! Names, defaults and meanings follow PgBouncer's where it has the setting.

pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

const fn s(name: &'static str, default: &'static str, help: &'static str) -> Setting {
    Setting {
        name,
        default,
        help,
    }
}

#[rustfmt::skip]
pub const SETTINGS: &[Setting] = &[
    s("worker_threads", "0", "threads serving clients (0: one per four cores, at least one)"),
    s("listen", "127.0.0.1:6432", "TCP address clients connect to"),
    s("listen_addr", "", "PgBouncer's name for listen's address: an IP address, * (every IPv4 one) or localhost; overrides listen's"),
    s("listen_port", "", "PgBouncer's name for listen's port; overrides listen's"),
    s("listen_backlog", "1024", "connections the kernel queues until pgdyno accepts them (PgBouncer: 128; capped by net.core.somaxconn)"),
    s("peer_id", "0", "this process's id among pgdynos sharing a port (so_reuseport), 1 to 16383, written into cancel keys so that any of them forwards a cancel to the one that issued it ([peers] in the file says where each is; 0: no peering)"),
    s("so_reuseport", "false", "SO_REUSEPORT on the listening socket: several pgdyno processes may listen on one port (the kernel spreads connections)"),
    s("tcp_keepalive", "true", "TCP keepalive on client and server sockets"),
    s("tcp_keepidle", "0", "seconds a connection is idle before the first keepalive probe (0: the system's)"),
    s("tcp_keepintvl", "0", "seconds between keepalive probes (0: the system's)"),
    s("tcp_keepcnt", "0", "unanswered keepalive probes before the connection is dropped (0: the system's)"),
    s("tcp_socket_buffer", "0", "bytes of kernel send and receive buffer for client and server sockets (SO_SNDBUF, SO_RCVBUF; 0: the system's, which tunes itself)"),
    s("tcp_user_timeout", "0", "milliseconds sent data may stay unacknowledged before the connection is dropped (TCP_USER_TIMEOUT; 0: the system's)"),
    s("metrics_listen", "", "address for HTTP GET /metrics (Prometheus), /health and /ready (empty: off)"),
    s("unix_socket_dir", "", "directory for a Unix socket .s.PGSQL.<port> (empty: none)"),
    s("unix_socket_mode", "0777", "permissions of the Unix socket file, in octal"),
    s("unix_socket_group", "", "group of the Unix socket file, by name or number (with unix_socket_mode 0770, only that group's members may connect)"),
    s("upstream", "", "PostgreSQL URL of the one database (default: $DATABASE_URL)"),
    s("pool_mode", "transaction", "session or transaction"),
    s("default_pool_size", "20", "backends per (database, user) pool, or auto: (max_connections - superuser_reserved_connections - pool_size_headroom) / fleet_size"),
    s("fleet_size", "1", "pgdyno instances sharing the server, for default_pool_size = auto (PGDYNO_FLEET_SIZE)"),
    s("pool_size_headroom", "5", "connections default_pool_size = auto leaves free on the server"),
    s("min_pool_size", "0", "backends kept open even when idle"),
    s("reserve_pool_size", "0", "extra backends for clients that waited reserve_pool_timeout"),
    s("reserve_pool_timeout", "5", "seconds a client waits before the reserve pool is used"),
    s("max_client_conn", "100", "client connections accepted in all"),
    s("max_db_connections", "0", "backends per database across users (0: no limit)"),
    s("max_user_connections", "0", "backends per user across databases (0: no limit)"),
    s("max_db_client_connections", "0", "clients per database (0: no limit; a database may set its own)"),
    s("max_user_client_connections", "0", "clients per user (0: no limit; [users] may set a user's own)"),
    s("query_wait_timeout", "120", "seconds a client may wait for a backend (0: forever)"),
    s("cancel_wait_timeout", "10", "seconds a cancel request may take to reach its backend (or its peer); past it, its connection is closed (0: no limit)"),
    s("client_login_timeout", "60", "seconds a client has to log in"),
    s("server_connect_timeout", "15", "seconds to connect and log in to PostgreSQL"),
    s("client_idle_timeout", "0", "seconds a client may stay idle (outside a transaction) before it is closed (0: forever)"),
    s("idle_transaction_timeout", "0", "seconds a client may sit idle inside a transaction before it is closed and its transaction rolled back (0: forever)"),
    s("transaction_timeout", "0", "seconds a transaction (or a statement outside one) may last before the client is closed and its backend dropped (0: forever)"),
    s("query_timeout", "0", "seconds a query may run before the client is closed and its backend dropped (0: forever)"),
    s("server_check_delay", "30", "seconds a backend may be idle before it is checked with server_check_query when lent"),
    s("server_check_query", ";", "query that checks a long-idle backend (empty: no check)"),
    s("server_login_retry", "15", "seconds after a failed backend login during which clients get that error at once"),
    s("server_idle_timeout", "600", "seconds an idle backend is kept (0: forever)"),
    s("autodb_idle_timeout", "3600", "seconds a pool of a database the [databases] `*` entry serves is kept once no client uses it (0: forever)"),
    s("server_lifetime", "3600", "seconds after which a released backend is closed (0: never)"),
    s("shutdown_timeout", "25", "seconds a shutdown waits for clients to leave (SIGTERM) or for transactions to end (SIGINT) before the clients still connected are closed"),
    s("server_reset_query", "DISCARD ALL", "run on a backend when a session-mode client leaves"),
    s("connect_query", "", "run on each new backend before any client gets it (a database may set its own)"),
    s("server_reset_query_always", "false", "run server_reset_query in transaction mode too, after every transaction"),
    s("disable_pqexec", "false", "refuse the simple query protocol (a Query message closes the client's connection, 08P01): only one statement per message then reaches PostgreSQL, which shuts out a class of SQL injection; clients must use the extended protocol"),
    s("server_fast_close", "false", "session mode: close a backend that RECONNECT or a changed upstream marked, and its client, at once between transactions or else at the end of the current one, rather than at the end of the session"),
    s("server_round_robin", "false", "lend idle backends in turn (least recently used first) instead of the most recently used"),
    s("application_name_add_host", "false", "append \" - <client address>:<port>\" to the application_name a client logs in with"),
    s("client_tls_sslmode", "disable", "TLS for clients: disable, allow, prefer (TLS offered), require (plaintext refused), verify-ca, verify-full (client certificate checked; its CN must be the user name)"),
    s("client_tls_cert_file", "", "PEM certificate (chain) pgdyno shows clients"),
    s("client_tls_key_file", "", "PEM private key of client_tls_cert_file"),
    s("client_tls_ca_file", "", "PEM CA certificates client certificates must chain to (verify-ca, verify-full)"),
    s("client_tls_cert_pem", "", "the certificate as PEM text instead of a file (PGDYNO_CLIENT_TLS_CERT_PEM)"),
    s("client_tls_key_pem", "", "the private key as PEM text instead of a file (PGDYNO_CLIENT_TLS_KEY_PEM)"),
    s("client_tls_ca_pem", "", "the client CA as PEM text instead of a file (PGDYNO_CLIENT_TLS_CA_PEM)"),
    s("client_tls_protocols", "secure", "TLS versions for clients: secure or all (1.2 and 1.3), or a list of tlsv1.2, tlsv1.3"),
    s("client_tls_ciphers", "default", "cipher suites for clients: default (every suite rustls has; PgBouncer's other keywords alike) or a list of suite names, OpenSSL's or IANA's"),
    s("server_tls_sslmode", "prefer", "TLS to PostgreSQL, as libpq's sslmode: disable, allow, prefer, require, verify-ca, verify-full (an upstream URL's sslmode wins)"),
    s("server_tls_ca_file", "", "PEM CA certificates for verify-ca and verify-full (empty: the system's roots; a URL's sslrootcert wins)"),
    s("server_tls_cert_file", "", "PEM client certificate pgdyno shows PostgreSQL (a URL's sslcert wins)"),
    s("server_tls_key_file", "", "PEM private key of server_tls_cert_file (a URL's sslkey wins)"),
    s("server_tls_protocols", "secure", "TLS versions toward PostgreSQL: secure or all (1.2 and 1.3), or a list of tlsv1.2, tlsv1.3"),
    s("server_tls_ciphers", "default", "cipher suites toward PostgreSQL, as client_tls_ciphers"),
    s("auth_type", "scram-sha-256", "client authentication: scram-sha-256, md5, plain, cert, trust, or hba (per connection, from auth_hba_file)"),
    s("auth_ident_file", "", "user name maps (pg_ident.conf format) for auth_hba_file's peer and cert records with map= (read again on reload)"),
    s("auth_hba_file", "", "pg_hba.conf-style rules for auth_type = hba (PgBouncer's subset; read again on reload)"),
    s("scram_iterations", "4096", "PBKDF2 iterations of the SCRAM secrets pgdyno makes from plain passwords (auth_file, upstream URL) to log clients in"),
    s("auth_file", "", "PgBouncer userlist.txt: \"user\" \"password, md5... or SCRAM-SHA-256$...\""),
    s("auth_user", "", "user that looks up, with auth_query, the secrets of users auth_file does not list (empty: no lookup)"),
    s("auth_query", "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname = $1 AND rolcanlogin", "query returning a user's name and secret for $1"),
    s("auth_dbname", "", "database auth_query runs in (empty: the one the client asked for)"),
    s("auth_failure_limit", "10", "failed logins from one address before it is refused for auth_failure_block_time (0: never)"),
    s("auth_failure_block_time", "60", "seconds an address that hit auth_failure_limit is refused"),
    s("auth_failure_delay", "1", "seconds a failed login's answer is delayed at auth_failure_limit (less before)"),
    s("ignore_startup_parameters", "extra_float_digits", "startup parameters accepted and ignored (comma list)"),
    s("max_prepared_statements", "200", "named prepared statements kept per backend in transaction mode (0: pass names through)"),
    s("track_extra_parameters", "IntervalStyle", "session parameters kept per client besides PgBouncer's five (comma list)"),
    s("max_packet_size", "1073741823", "largest message a client may send, in bytes"),
    s("admin_users", "", "users allowed every admin console command (comma list)"),
    s("stats_users", "", "users allowed the admin console's SHOW commands (comma list)"),
    s("stats_period", "60", "seconds between stats log lines and SHOW STATS averages"),
    s("log_format", "text", "text or json"),
    s("log_level", "info", "error, warn, info, debug or trace (or a tracing filter)"),
    s("logfile", "", "also append log lines to this file (opened again by RELOAD and SIGHUP, for log rotation)"),
    s("pidfile", "", "write the process id to this file while running (a file naming a running pgdyno stops a second one)"),
    s("log_connections", "true", "log each client login"),
    s("log_disconnections", "true", "log each client disconnection"),
    s("log_pooler_errors", "true", "log the errors pgdyno itself sends to clients"),
    s("log_stats", "true", "log each database's traffic every stats_period"),
];

pub fn find(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// Short or PgBouncer-familiar names that mean another setting.
pub fn canonical(name: &str) -> &str {
    match name {
        "pool_size" => "default_pool_size",
        other => other,
    }
}
