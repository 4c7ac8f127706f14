use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn flags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    env(pairs)
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("pgdyno-config-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn database_url_is_the_default_upstream() {
    let c = Config::load(&Sources {
        env: env(&[("DATABASE_URL", "postgres://u:p@db.example:5433/d1")]),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.databases.len(), 1);
    assert_eq!(c.databases[0].name, "d1");
    assert_eq!(c.databases[0].upstream.port, 5433);
    assert_eq!(c.pool_mode, PoolMode::Transaction);
    assert_eq!(c.default_pool_size, 20);
    assert_eq!(c.query_wait_timeout, Some(Duration::from_secs(120)));
}

#[test]
fn flags_beat_env_beat_file() {
    let path = temp_file(
        "precedence.toml",
        "default_pool_size = 3\nmax_client_conn = 7\nquery_wait_timeout = 2.5\n\
         [databases]\na = \"postgres://u:p@h/a\"\nb = { url = \"postgres://u:p@h/real\", pool_size = 2, pool_mode = \"session\" }\n",
    );
    let c = Config::load(&Sources {
        file: Some(path.clone()),
        env: env(&[
            ("PGDYNO_MAX_CLIENT_CONN", "8"),
            ("PGDYNO_DEFAULT_POOL_SIZE", "4"),
        ]),
        flags: flags(&[("pool_size", "5")]),
    })
    .unwrap();
    std::fs::remove_file(path).unwrap();
    assert_eq!(c.default_pool_size, 5);
    assert_eq!(c.max_client_conn, 8);
    assert_eq!(c.query_wait_timeout, Some(Duration::from_millis(2500)));
    let b = c.database("b").unwrap();
    assert_eq!((b.pool_size, b.pool_mode), (2, PoolMode::Session));
    assert_eq!(b.upstream.dbname.as_deref(), Some("real"));
    assert_eq!(c.database("a").unwrap().pool_size, 5);
}

#[test]
fn errors_name_the_key() {
    let e = Config::load(&Sources {
        flags: flags(&[("upstream", "postgres://u@h/d"), ("pool_size", "many")]),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        e.0.contains("default_pool_size") && e.0.contains("--pool-size"),
        "{e}"
    );
    let e = Config::load(&Sources {
        flags: flags(&[("upstream", "postgres://u@h/d"), ("no_such_thing", "1")]),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.0.contains("no_such_thing"), "{e}");
    let e = Config::load(&Sources::default()).unwrap_err();
    assert!(e.0.contains("upstream"), "{e}");
    let e = Config::load(&Sources {
        env: env(&[
            ("PGDYNO_QUERY_WAIT_TIMEOUT", "soon"),
            ("DATABASE_URL", "postgres://h/d"),
        ]),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.0.contains("PGDYNO_QUERY_WAIT_TIMEOUT"), "{e}");
    for (key, bad) in [
        ("unix_socket_mode", "0999"),
        ("unix_socket_mode", "01777"),
        ("tcp_keepcnt", "-1"),
        ("tcp_user_timeout", "soon"),
        ("so_reuseport", "maybe"),
    ] {
        let e = Config::load(&Sources {
            flags: flags(&[("upstream", "postgres://u@h/d"), (key, bad)]),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.0.contains(key) && e.0.contains(bad), "{key}: {e}");
    }
}

/// A configuration from an upstream and `pairs` as flags.
fn with_flags(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut all = vec![("upstream", "postgres://u@h/d")];
    all.extend_from_slice(pairs);
    Config::load(&Sources {
        flags: flags(&all),
        ..Default::default()
    })
}

/// PgBouncer's units: tcp_user_timeout in milliseconds, the keepalive
/// times in seconds; units may be given.
#[test]
fn tcp_options() {
    let load = |pairs: &[(&str, &str)]| with_flags(pairs).unwrap().tcp;
    let defaults = load(&[]);
    assert!(defaults.keepalive);
    assert_eq!(
        (defaults.keepidle, defaults.keepcnt, defaults.user_timeout),
        (None, None, None)
    );
    let set = load(&[
        ("tcp_keepidle", "60"),
        ("tcp_keepintvl", "500ms"),
        ("tcp_keepcnt", "4"),
        ("tcp_user_timeout", "1500"),
    ]);
    assert_eq!(set.keepidle, Some(Duration::from_secs(60)));
    assert_eq!(set.keepintvl, Some(Duration::from_millis(500)));
    assert_eq!(set.keepcnt, Some(4));
    assert_eq!(set.user_timeout, Some(Duration::from_millis(1500)));
    let with_unit = load(&[("tcp_user_timeout", "2s")]);
    assert_eq!(with_unit.user_timeout, Some(Duration::from_secs(2)));
}

#[test]
fn durations() {
    assert_eq!(
        value::parse_duration("500ms").unwrap(),
        Duration::from_millis(500)
    );
    assert_eq!(
        value::parse_duration("2min").unwrap(),
        Duration::from_secs(120)
    );
    assert_eq!(value::parse_duration("0").unwrap(), Duration::ZERO);
    assert!(value::parse_duration("-1").is_err());
    assert!(value::parse_duration("5 parsecs").is_err());
}

#[test]
fn readme_documents_every_setting() {
    let readme = include_str!("../../README.md");
    for s in SETTINGS {
        assert!(
            readme.contains(&format!("| `{}` |", s.name)),
            "README's settings table lacks {}",
            s.name
        );
    }
}

/// `[users]`: a user's pool_mode, pool_size, reserve_pool_size and
/// max_user_connections; anything else, or no table, names the entry.
#[test]
fn users_table() {
    let load = |text: &str| {
        let path = temp_file("users.toml", text);
        let c = Config::load(&Sources {
            file: Some(path.clone()),
            ..Default::default()
        });
        std::fs::remove_file(path).unwrap();
        c
    };
    let c = load(
        "upstream = \"postgres://u@h/d\"\nmax_user_connections = 9\n[users]\n\
         report = { pool_mode = \"session\", pool_size = 2, reserve_pool_size = 1, max_user_connections = 3, max_user_client_connections = 5 }\n\
         other = {}\n",
    )
    .unwrap();
    let report = &c.users["report"];
    assert_eq!(report.pool_mode, Some(PoolMode::Session));
    assert_eq!(
        (report.pool_size, report.reserve_pool_size),
        (Some(2), Some(1))
    );
    assert_eq!(c.max_user_connections("report"), 3);
    assert_eq!(c.max_user_connections("other"), 9);
    assert_eq!(c.max_user_connections("nobody"), 9);
    assert_eq!(c.max_user_client_connections("report"), 5);
    assert_eq!(c.max_user_client_connections("other"), 0);
    assert!(c.users["other"].pool_mode.is_none());

    for (bad, want) in [
        ("[users]\nx = { colour = \"blue\" }\n", "colour"),
        ("[users]\nx = \"session\"\n", "users.x"),
        ("[users]\nx = { pool_size = 0 }\n", "users.x"),
        ("[users]\nx = { pool_mode = \"statement\" }\n", "pool_mode"),
        ("users = 3\n", "users"),
    ] {
        let e = load(&format!("upstream = \"postgres://u@h/d\"\n{bad}")).unwrap_err();
        assert!(e.0.contains(want), "{bad}: {e}");
    }
}

/// `listen_addr` and `listen_port` replace `listen`'s parts; one address only.
#[test]
fn listen_addr_and_port_replace_listens_parts() {
    let listen = |pairs: &[(&str, &str)]| with_flags(pairs).unwrap().listen.to_string();
    assert_eq!(listen(&[]), "127.0.0.1:6432");
    assert_eq!(listen(&[("listen_port", "6000")]), "127.0.0.1:6000");
    assert_eq!(listen(&[("listen_addr", "*")]), "0.0.0.0:6432");
    assert_eq!(
        listen(&[("listen", "10.0.0.1:7000"), ("listen_addr", "::1")]),
        "[::1]:7000"
    );
    for (bad, want) in [
        (("listen_addr", "10.0.0.1,10.0.0.2"), "listen_addr"),
        (("listen_port", "many"), "listen_port"),
    ] {
        let e = with_flags(&[bad]).unwrap_err();
        assert!(e.0.contains(want), "{bad:?}: {e}");
    }
}

/// `peer_id` and `[peers]`: ids from 1 to 16383, addresses as connection
/// strings or URLs.
#[test]
fn peers_table() {
    let load = |text: &str| {
        let path = temp_file("peers.toml", text);
        let c = Config::load(&Sources {
            file: Some(path.clone()),
            ..Default::default()
        });
        std::fs::remove_file(path).unwrap();
        c
    };
    let c = load(
        "upstream = \"postgres://u@h/d\"\npeer_id = 2\n[peers]\n\
         1 = \"host=127.0.0.1 port=6433\"\n2 = \"postgres://127.0.0.1:6434\"\n",
    )
    .unwrap();
    assert_eq!(c.peer_id, 2);
    let ports = (c.peers[&1].upstream.port, c.peers[&2].upstream.port);
    assert_eq!(ports, (6433, 6434));
    // pool_size: default_pool_size unless the string or the table says.
    let c = load(
        "upstream = \"postgres://u@h/d\"\ndefault_pool_size = 7\n[peers]\n\
         1 = \"host=h port=6433 pool_size=2\"\n2 = { url = \"host=h\", pool_size = 3 }\n\
         3 = \"host=h\"\n",
    )
    .unwrap();
    let sizes: Vec<usize> = c.peers.values().map(|p| p.pool_size).collect();
    assert_eq!(sizes, [2, 3, 7]);
    assert!(
        c.peers[&1].upstream.params.is_empty(),
        "pool_size is not sent on"
    );
    for (bad, want) in [
        ("[peers]\n1 = \"host=h pool_size=0\"\n", "pool_size"),
        (
            "[peers]\n1 = { url = \"host=h\", pool_size = \"x\" }\n",
            "pool_size",
        ),
        (
            "[peers]\n1 = { url = \"host=h\", size = 2 }\n",
            "unknown key \"size\"",
        ),
        ("[peers]\n1 = { pool_size = 2 }\n", "needs url"),
        ("peer_id = 16384\n", "peer_id"),
        ("[peers]\nfirst = \"host=h\"\n", "peers.first"),
        ("[peers]\n0 = \"host=h\"\n", "peers.0"),
        ("[peers]\n1 = 6433\n", "peers.1"),
    ] {
        let e = load(&format!("upstream = \"postgres://u@h/d\"\n{bad}")).unwrap_err();
        assert!(e.0.contains(want), "{bad}: {e}");
    }
}

/// The relay keeps a timer only for timeouts it can hit: in transaction
/// mode a client is idle unbound, so client_idle_timeout alone needs none.
#[test]
fn relay_timeouts() {
    let idle_only = Timeouts {
        client_idle: Some(Duration::from_secs(5)),
        ..Timeouts::default()
    };
    assert!(!idle_only.in_relay(true));
    assert!(idle_only.in_relay(false));
    assert!(!Timeouts::default().in_relay(false));
    for t in [
        Timeouts {
            query: Some(Duration::from_secs(1)),
            ..Timeouts::default()
        },
        Timeouts {
            transaction: Some(Duration::from_secs(1)),
            ..Timeouts::default()
        },
        Timeouts {
            idle_transaction: Some(Duration::from_secs(1)),
            ..Timeouts::default()
        },
    ] {
        assert!(t.in_relay(true), "{t:?}");
    }
}
