//! The SHOW commands, with PgBouncer's column names, order and types.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use bytes::BytesMut;

use super::rows::{timestamp, v, Table, Type};
use crate::config::PoolMode;
use crate::pooler::Pooler;
use crate::stats::Totals;

use Type::{Int4, Int8, Numeric, Text};

pub fn show(what: &str, pooler: &Pooler, out: &mut BytesMut) -> Result<(), String> {
    let table = match what {
        "help" => help(),
        "version" => {
            let mut t = Table::new(&[("version", Text)]);
            t.row(vec![v(version())]);
            t
        }
        "config" => super::config::table(pooler),
        "state" => state(pooler),
        "lists" => lists(pooler),
        "pools" => pools(pooler),
        "stats" => stats(pooler),
        "stats_totals" => stats_totals(pooler),
        "stats_averages" => stats_averages(pooler),
        "totals" => all_totals(pooler),
        "clients" => clients(pooler),
        "servers" => servers(pooler),
        "databases" => databases(pooler),
        "users" => users(pooler),
        "peers" => peers(pooler),
        "peer_pools" => peer_pools(pooler),
        other => {
            return Err(format!(
                "unknown SHOW item \"{other}\" (SHOW HELP lists them)"
            ))
        }
    };
    table.write(out);
    Ok(())
}

/// PgBouncer-compatible version text (pgbouncer_exporter reads the number).
pub fn version() -> String {
    format!(
        "PgBouncer 1.25.0 compatible: pgdyno {}",
        env!("CARGO_PKG_VERSION")
    )
}

fn help() -> Table {
    let mut t = Table::new(&[("command", Text)]);
    for line in [
        "SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION",
        "SHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS|LISTS",
        "SHOW PEERS|PEER_POOLS|STATE",
        "PAUSE [<db>]",
        "RESUME [<db>]",
        "DISABLE <db>",
        "ENABLE <db>",
        "RECONNECT [<db>]",
        "WAIT_CLOSE [<db>]",
        "SET <key> = <value>",
        "RELOAD",
        "KILL [<db>]",
        "KILL_CLIENT <id>",
        "SHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS]",
    ] {
        t.row(vec![v(line)]);
    }
    t
}

/// PgBouncer's SHOW STATE: whether pgdyno serves, is paused, is suspended
/// (it has no SUSPEND: always no).
fn state(pooler: &Pooler) -> Table {
    let mut t = Table::new(&[("key", Text), ("value", Text)]);
    let pools = pooler.pools();
    let paused = !pools.is_empty() && pools.iter().all(|p| p.is_paused());
    let active = !pooler.shutdown.has_begun() && !paused;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    for (key, value) in [
        ("active", yes_no(active)),
        ("paused", yes_no(paused)),
        ("suspended", "no"),
    ] {
        t.row(vec![v(key), v(value)]);
    }
    t
}

fn lists(pooler: &Pooler) -> Table {
    let mut t = Table::new(&[("list", Text), ("items", Int4)]);
    let pools = pooler.pools();
    let users: std::collections::BTreeSet<_> = pools.iter().map(|p| p.user.clone()).collect();
    let (mut used, mut free) = (0, 0);
    for p in &pools {
        let s = p.snapshot();
        used += s.backends_active;
        free += s.backends_idle;
    }
    let clients = pooler.registry.clients.len();
    for (name, n) in [
        ("databases", pooler.config().databases.len()),
        ("users", users.len()),
        ("peers", pooler.config().peers.len()),
        ("pools", pools.len()),
        ("peer_pools", pooler.config().peers.len()),
        ("free_clients", 0),
        ("used_clients", clients),
        ("login_clients", 0),
        ("free_servers", free),
        ("used_servers", used),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        t.row(vec![v(name), v(n)]);
    }
    t
}

fn pools(pooler: &Pooler) -> Table {
    let mut t = Table::new(&[
        ("database", Text),
        ("user", Text),
        ("cl_active", Int4),
        ("cl_waiting", Int4),
        ("cl_active_cancel_req", Int4),
        ("cl_waiting_cancel_req", Int4),
        ("sv_active", Int4),
        ("sv_active_cancel", Int4),
        ("sv_being_canceled", Int4),
        ("sv_idle", Int4),
        ("sv_used", Int4),
        ("sv_tested", Int4),
        ("sv_login", Int4),
        ("maxwait", Int4),
        ("maxwait_us", Int4),
        ("pool_mode", Text),
        ("load_balance_hosts", Text),
    ]);
    for p in pooler.pools() {
        let s = p.snapshot();
        let wait = s.longest_wait;
        let mode = p.settings().mode.name();
        let cancels = &p.target.cancels;
        let [waiting, active, held] =
            [&cancels.waiting, &cancels.active, &cancels.held].map(|c| c.load(Relaxed));
        t.row(vec![
            v(&p.database),
            v(&p.user),
            v(s.clients_active),
            v(s.clients_waiting),
            v(active),
            v(waiting),
            // A backend held for its cancels is not active.
            v(s.backends_active.saturating_sub(held)),
            v(active),
            v(held),
            v(s.backends_idle),
            v(0),
            v(0),
            v(s.backends_login),
            v(wait.as_secs()),
            v(wait.subsec_micros()),
            v(mode),
            load_balance_hosts(&p.target.endpoint().upstream),
        ]);
    }
    t
}

/// Totals per database, summed over its pools.
fn totals(pooler: &Pooler) -> BTreeMap<String, Totals> {
    let mut by_db: BTreeMap<String, Totals> = pooler
        .config()
        .databases
        .iter()
        .map(|d| (d.name.clone(), Totals::default()))
        .collect();
    for p in pooler.pools() {
        by_db
            .entry(p.database.clone())
            .or_default()
            .add_pool(&p.stats);
    }
    by_db
}

fn averages(pooler: &Pooler) -> BTreeMap<String, Totals> {
    let periods = pooler.periods.by_database.lock().unwrap();
    totals(pooler)
        .into_keys()
        .map(|db| {
            let avg = periods
                .get(&db)
                .map(|(before, after)| after.averages(before, pooler.config().stats_period))
                .unwrap_or_default();
            (db, avg)
        })
        .collect()
}

const STAT_NAMES: [&str; 12] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "received",
    "sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
    "client_login_count",
];

fn values(t: &Totals) -> [u64; 12] {
    [
        t.assignments,
        t.xacts,
        t.queries,
        t.received,
        t.sent,
        t.xact_us,
        t.query_us,
        t.wait_us,
        t.client_parses,
        t.server_parses,
        t.binds,
        t.logins,
    ]
}

fn stats(pooler: &Pooler) -> Table {
    const TOTAL: [&str; 12] = [
        "total_server_assignment_count",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
        "total_client_parse_count",
        "total_server_parse_count",
        "total_bind_count",
        "total_client_login_count",
    ];
    const AVG: [&str; 12] = [
        "avg_server_assignment_count",
        "avg_xact_count",
        "avg_query_count",
        "avg_recv",
        "avg_sent",
        "avg_xact_time",
        "avg_query_time",
        "avg_wait_time",
        "avg_client_parse_count",
        "avg_server_parse_count",
        "avg_bind_count",
        "avg_client_login_count",
    ];
    let mut columns = vec![("database", Text)];
    columns.extend(TOTAL.iter().map(|n| (*n, Numeric)));
    columns.extend(AVG.iter().map(|n| (*n, Numeric)));
    let mut t = Table::new(&columns);
    let avgs = averages(pooler);
    for (db, total) in totals(pooler) {
        let avg = avgs.get(&db).copied().unwrap_or_default();
        let mut row = vec![v(&db)];
        row.extend(values(&total).iter().map(v));
        row.extend(values(&avg).iter().map(v));
        t.row(row);
    }
    t
}

fn stats_totals(pooler: &Pooler) -> Table {
    let names = STAT_NAMES.map(|n| match n {
        "received" => "bytes_received",
        "sent" => "bytes_sent",
        other => other,
    });
    per_database(&names, totals(pooler))
}

fn stats_averages(pooler: &Pooler) -> Table {
    // Named like STATS_TOTALS, but the prepared-statement counts keep their
    // avg_ prefix, as in PgBouncer's stats.c.
    let names = STAT_NAMES.map(|n| match n {
        "received" => "bytes_received",
        "sent" => "bytes_sent",
        "client_parse_count" => "avg_client_parse_count",
        "server_parse_count" => "avg_server_parse_count",
        "bind_count" => "avg_bind_count",
        other => other,
    });
    per_database(&names, averages(pooler))
}

/// PgBouncer's SHOW TOTALS: the twelve statistics over all databases, a
/// row each, totals then averages (named after PgBouncer's counters).
fn all_totals(pooler: &Pooler) -> Table {
    const NAMES: [&str; 12] = [
        "server_assignment_count",
        "xact_count",
        "query_count",
        "client_bytes",
        "server_bytes",
        "xact_time",
        "query_time",
        "wait_time",
        "ps_client_parse_count",
        "ps_server_parse_count",
        "ps_bind_count",
        "client_connect_count",
    ];
    let sum = |by_db: BTreeMap<String, Totals>| {
        by_db.values().fold([0u64; 12], |mut acc, t| {
            for (a, x) in acc.iter_mut().zip(values(t)) {
                *a += x;
            }
            acc
        })
    };
    let mut t = Table::new(&[("name", Text), ("value", Numeric)]);
    for (prefix, sums) in [
        ("total", sum(totals(pooler))),
        ("avg", sum(averages(pooler))),
    ] {
        for (name, value) in NAMES.iter().zip(sums) {
            t.row(vec![v(format!("{prefix}_{name}")), v(value)]);
        }
    }
    t
}

/// A row of the twelve statistics per database, under `names`.
fn per_database(names: &[&'static str; 12], by_db: BTreeMap<String, Totals>) -> Table {
    let mut columns = vec![("database", Text)];
    columns.extend(names.iter().map(|n| (*n, Numeric)));
    let mut t = Table::new(&columns);
    for (db, stats) in by_db {
        let mut row = vec![v(&db)];
        row.extend(values(&stats).iter().map(v));
        t.row(row);
    }
    t
}

const CONNECTION_COLUMNS: &[(&str, Type)] = &[
    ("type", Text),
    ("user", Text),
    ("database", Text),
    ("replication", Text),
    ("state", Text),
    ("addr", Text),
    ("port", Int4),
    ("local_addr", Text),
    ("local_port", Int4),
    ("connect_time", Text),
    ("request_time", Text),
    ("wait", Int4),
    ("wait_us", Int4),
    ("close_needed", Int4),
    ("ptr", Text),
    ("link", Text),
    ("remote_pid", Int4),
    ("tls", Text),
    ("application_name", Text),
    ("prepared_statements", Int4),
    ("id", Int8),
];

fn clients(pooler: &Pooler) -> Table {
    let mut t = Table::new(CONNECTION_COLUMNS);
    let listen = pooler.config().listen;
    let mut entries: Vec<_> = pooler
        .registry
        .clients
        .iter()
        .map(|e| e.value().clone())
        .collect();
    entries.sort_by_key(|e| e.id);
    for c in entries {
        let waited = c.waited_us();
        let wait = waited.unwrap_or(0);
        t.row(vec![
            v("C"),
            v(&c.user),
            v(&c.database),
            v("none"),
            v(if waited.is_some() {
                "waiting"
            } else {
                "active"
            }),
            v(&c.addr),
            v(c.port),
            v(listen.ip()),
            v(listen.port()),
            v(timestamp(c.connect_time_us)),
            v(timestamp(c.request_time_us.load(Relaxed))),
            v(wait / 1_000_000),
            v(wait % 1_000_000),
            v(0),
            v(format!("{:x}", c.id)),
            None,
            v(c.process_id),
            v(&c.tls),
            v(&c.application_name),
            v(0),
            v(c.id),
        ]);
    }
    t
}

fn servers(pooler: &Pooler) -> Table {
    let mut t = Table::new(CONNECTION_COLUMNS);
    let mut entries: Vec<_> = pooler
        .registry
        .servers
        .iter()
        .map(|e| e.value().clone())
        .collect();
    entries.sort_by_key(|e| e.id);
    for s in entries {
        let active = s.active.load(Relaxed);
        t.row(vec![
            v("S"),
            v(&s.user),
            v(&s.database),
            v("none"),
            v(if active { "active" } else { "idle" }),
            v(&s.addr),
            v(s.port),
            None,
            None,
            v(timestamp(s.connect_time_us)),
            v(timestamp(
                s.request_time_us.load(Relaxed).max(s.connect_time_us),
            )),
            v(0),
            v(0),
            v(0),
            v(format!("{:x}", s.id)),
            None,
            v(s.remote_pid),
            v(&s.tls),
            None,
            v(0),
            v(s.id),
        ]);
    }
    t
}

fn databases(pooler: &Pooler) -> Table {
    let mut t = Table::new(&[
        ("name", Text),
        ("host", Text),
        ("port", Int4),
        ("database", Text),
        ("force_user", Text),
        ("pool_size", Int4),
        ("min_pool_size", Int4),
        ("reserve_pool_size", Int4),
        ("server_lifetime", Int4),
        ("pool_mode", Text),
        ("load_balance_hosts", Text),
        ("max_connections", Int4),
        ("current_connections", Int4),
        ("max_client_connections", Int4),
        ("current_client_connections", Int4),
        ("paused", Int4),
        ("disabled", Int4),
    ]);
    let pools = pooler.pools();
    let config = pooler.config();
    // The configured databases, then those the `*` entry serves now.
    let mut all: Vec<_> = config
        .databases
        .iter()
        .map(std::borrow::Cow::Borrowed)
        .collect();
    let mut auto: Vec<&str> = pools
        .iter()
        .map(|p| p.database.as_str())
        .filter(|name| config.is_auto_database(name))
        .collect();
    auto.dedup();
    all.extend(auto.into_iter().filter_map(|name| config.database(name)));
    for d in &all {
        let mine: Vec<_> = pools.iter().filter(|p| p.database == d.name).collect();
        let current: usize = mine
            .iter()
            .map(|p| {
                let s = p.snapshot();
                s.backends_active + s.backends_idle + s.backends_login
            })
            .sum();
        let clients = pooler
            .registry
            .clients
            .iter()
            .filter(|c| c.database == d.name)
            .count();
        let mode = d.pool_mode.name();
        t.row(vec![
            v(&d.name),
            v(d.upstream.host_list()),
            v(d.upstream.port),
            v(d.upstream.dbname.as_deref().unwrap_or(&d.name)),
            d.upstream.user.as_ref().map(v).unwrap_or(None),
            v(d.pool_size),
            v(d.min_pool_size),
            v(d.reserve_pool_size),
            v(pooler
                .config()
                .server_lifetime
                .map(|l| l.as_secs())
                .unwrap_or(0)),
            v(mode),
            load_balance_hosts(&d.upstream),
            v(d.max_db_connections),
            v(current),
            v(d.max_db_client_connections),
            v(clients),
            v(i32::from(mine.iter().any(|p| p.is_paused()))),
            v(i32::from(pooler.is_disabled(&d.name))),
        ]);
    }
    t
}

/// The `load_balance_hosts` column: how new backends pick among several
/// hosts; NULL for one.
fn load_balance_hosts(upstream: &crate::config::Upstream) -> Option<String> {
    (!upstream.more_hosts.is_empty()).then(|| upstream.load_balance.name().to_owned())
}

/// The `[peers]` table: where each peer takes cancels.
fn peers(pooler: &Pooler) -> Table {
    let mut t = Table::new(&[
        ("peer_id", Int4),
        ("host", Text),
        ("port", Int4),
        ("pool_size", Int4),
    ]);
    for (id, peer) in &pooler.config().peers {
        t.row(vec![
            v(id),
            v(peer.upstream.host.to_string()),
            v(peer.upstream.port),
            v(peer.pool_size),
        ]);
    }
    t
}

/// Cancels on their way to each peer: waiting for a slot or a connection
/// (cl_waiting_cancel_req; sv_login: connections opening), and sent,
/// waiting for the peer to close (cl_active_cancel_req, sv_active_cancel:
/// one connection per cancel).
fn peer_pools(pooler: &Pooler) -> Table {
    let mut t = Table::new(&[
        ("peer_id", Int4),
        ("cl_active_cancel_req", Int4),
        ("cl_waiting_cancel_req", Int4),
        ("sv_active_cancel", Int4),
        ("sv_login", Int4),
    ]);
    for id in pooler.config().peers.keys() {
        let c = pooler.cancels.peers.counts(*id);
        t.row(vec![
            v(id),
            v(c.active),
            v(c.waiting),
            v(c.active),
            v(c.login),
        ]);
    }
    t
}

fn users(pooler: &Pooler) -> Table {
    let mut t = Table::new(&[
        ("name", Text),
        ("pool_size", Int4),
        ("reserve_pool_size", Int4),
        ("pool_mode", Text),
        ("max_user_connections", Int4),
        ("current_connections", Int4),
        ("max_user_client_connections", Int4),
        ("current_client_connections", Int4),
    ]);
    let config = pooler.config();
    let pools = pooler.pools();
    let names: std::collections::BTreeSet<_> = pools.iter().map(|p| p.user.clone()).collect();
    for name in names {
        let current: usize = pools
            .iter()
            .filter(|p| p.user == name)
            .map(|p| {
                let s = p.snapshot();
                s.backends_active + s.backends_idle + s.backends_login
            })
            .sum();
        let clients = pooler
            .registry
            .clients
            .iter()
            .filter(|c| c.user == name)
            .count();
        // Settings the user has in [users]; 0 or NULL where it has none,
        // as PgBouncer shows them.
        let own = config.users.get(&name).cloned().unwrap_or_default();
        let mode = own.pool_mode.map(PoolMode::name);
        t.row(vec![
            v(&name),
            v(own.pool_size.unwrap_or(0)),
            v(own.reserve_pool_size.unwrap_or(0)),
            mode.and_then(v),
            v(config.max_user_connections(&name)),
            v(current),
            v(config.max_user_client_connections(&name)),
            v(clients),
        ]);
    }
    t
}
