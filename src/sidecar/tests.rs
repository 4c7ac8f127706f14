//! Unit tests of the sidecar's URL handling and preparation (the process
//! side is in tests/it/sidecar.rs).

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn prepare(pairs: &[(&str, &str)]) -> Result<Sidecar, SidecarError> {
    let sources = Sources {
        env: env(pairs),
        ..Sources::default()
    };
    Sidecar::prepare(sources, vec!["true".into()])
}

#[test]
fn var_names() {
    assert_eq!(url_var_names(None), ["DATABASE_URL"]);
    assert_eq!(
        url_var_names(Some("DATABASE_URL, OTHER_URL,OTHER_URL  THIRD")),
        ["DATABASE_URL", "OTHER_URL", "THIRD"]
    );
    assert_eq!(url_var_names(Some(" , ")), ["DATABASE_URL"]);
}

#[test]
fn rewritten_url() {
    let v = UrlVar {
        var: "DATABASE_URL".into(),
        database: "d1".into(),
        user: Some("u@x".into()),
        password: Some("p:s/s%".into()),
    };
    let local: SocketAddr = "127.0.0.1:6432".parse().unwrap();
    assert_eq!(
        v.local_url(local, true, "disable"),
        "postgres://u%40x:p%3As%2Fs%25@127.0.0.1:6432/d1?sslmode=disable"
    );
    assert_eq!(
        v.local_url("0.0.0.0:7000".parse().unwrap(), false, "disable"),
        "postgres://u%40x@127.0.0.1:7000/d1?sslmode=disable"
    );
}

#[test]
fn databases_from_url_vars() {
    let s = prepare(&[
        (
            "PGDYNO_URLS",
            "DATABASE_URL HEROKU_POSTGRESQL_RED_URL OTHER_URL",
        ),
        ("DATABASE_URL", "postgres://u:p@db1.example:5432/d1"),
        (
            "HEROKU_POSTGRESQL_RED_URL",
            "postgres://u:p@db1.example:5432/d1",
        ),
        ("OTHER_URL", "postgres://v:q@db2.example:5432/d1"),
        ("PGDYNO_DEFAULT_POOL_SIZE", "3"),
    ])
    .unwrap();
    let names: Vec<_> = s.config.databases.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["d1", "d1_2"]);
    assert!(s.config.databases.iter().all(|d| d.pool_size == 3));
    let dbs: Vec<_> = s.vars.iter().map(|v| v.database.as_str()).collect();
    assert_eq!(dbs, ["d1", "d1", "d1_2"]);
    assert_eq!(s.vars[2].user.as_deref(), Some("v"));
}

#[test]
fn errors_name_the_variable() {
    let e = prepare(&[("DATABASE_URL", "postgres://u:sekrit%zz@h:5432/d")]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("DATABASE_URL"), "{msg}");
    assert!(!msg.contains("sekrit"), "{msg}");
    assert_eq!(e.exit_code(), 2);
    let e = prepare(&[
        ("PGDYNO_URLS", "DATABASE_URL,RED_URL"),
        ("DATABASE_URL", "postgres://u:p@h/d"),
    ])
    .unwrap_err();
    assert!(e.to_string().starts_with("RED_URL is not set"), "{e}");
    let e = prepare(&[
        ("DATABASE_URL", "postgres://u:p@h/d"),
        ("PGDYNO_UPSTREAM", "postgres://u:p@h/d"),
    ])
    .unwrap_err();
    assert!(matches!(e, SidecarError::UpstreamGiven(_)), "{e}");
    let e = prepare(&[
        ("DATABASE_URL", "postgres://u:p@h/d"),
        ("PGDYNO_POOL_MODE", "statement"),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("pool_mode"), "{e}");
}
