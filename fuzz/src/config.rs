//! The text pgdyno reads from its operator: `userlist.txt`
//! (`pgdyno::auth::parse_userlist`), upstream URLs and key=value strings
//! (`pgdyno::config::parse_upstream`) and the TOML file (`Config::load`).

use std::path::PathBuf;

use pgdyno::auth::{parse_userlist, Secret};
use pgdyno::config::{parse_upstream, Config, Host, Sources, Upstream};

/// Every entry read must read back the same once written again.
pub fn userlist(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(users) = parse_userlist(text) else {
        return;
    };
    let mut again = String::new();
    let mut expected = Vec::new();
    for (user, secret) in &users {
        let _ = secret.md5(user);
        let _ = secret.password();
        // A SCRAM secret's check costs its (operator-chosen) iterations.
        if !matches!(secret, Secret::Scram(_)) {
            let _ = secret.verify_password(user, "password");
        }
        let text = match secret {
            Secret::Plain { password, .. } => password.clone(),
            Secret::Md5(m) => m.clone(),
            Secret::Scram(_) => continue,
        };
        again.push_str(&format!("{} {}\n", quote(user), quote(&text)));
        expected.push((user.clone(), text));
    }
    let read: Vec<(String, String)> = parse_userlist(&again)
        .expect("written entries read back")
        .into_iter()
        .map(|(user, secret)| {
            let text = match secret {
                Secret::Plain { password, .. } => password,
                Secret::Md5(m) => m,
                Secret::Scram(_) => panic!("a non-SCRAM secret read back as SCRAM"),
            };
            (user, text)
        })
        .collect();
    assert_eq!(read, expected);
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// URLs and key=value strings; what parses must parse the same once
/// written again in key=value form.
pub fn upstream_url(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(upstream) = parse_upstream(text) else {
        return;
    };
    let _ = upstream.redacted();
    if let Some(again) = keywords(&upstream) {
        assert_eq!(
            parse_upstream(&again).as_ref(),
            Ok(&upstream),
            "{again:?} reads differently"
        );
    }
}

/// `upstream` in libpq's key=value form (params first: the named keys are
/// taken from the last occurrence), or `None` if a key cannot be written.
fn keywords(u: &Upstream) -> Option<String> {
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut out = Vec::new();
    for (k, v) in &u.params {
        if k.contains(|c: char| c.is_whitespace() || c == '=') || k.starts_with("postgres") {
            return None;
        }
        out.push(format!("{k}={}", quote(v)));
    }
    // Every host, and a port each; a host with a comma cannot be listed.
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for (host, port) in u.hosts() {
        let host = match host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.to_str()?.to_owned(),
        };
        if host.contains(',') {
            return None;
        }
        hosts.push(host);
        ports.push(port.to_string());
    }
    out.push(format!("host={}", quote(&hosts.join(","))));
    out.push(format!("port={}", ports.join(",")));
    out.push(format!("load_balance_hosts={}", u.load_balance.name()));
    out.push(format!("target_session_attrs={}", u.session_attrs.name()));
    // An empty dbname or user reads as none; written, it also keeps an
    // earlier duplicate (left in params) from being taken instead.
    out.push(format!(
        "dbname={}",
        quote(u.dbname.as_deref().unwrap_or(""))
    ));
    out.push(format!("user={}", quote(u.user.as_deref().unwrap_or(""))));
    if let Some(password) = &u.password {
        out.push(format!("password={}", quote(password)));
    }
    Some(out.join(" "))
}

/// A config file with arbitrary content, loaded as `pgdyno --config` does
/// (with `DATABASE_URL` set, so that files without databases load too).
pub fn config_toml(data: &[u8]) {
    let path = config_path();
    std::fs::write(&path, data).expect("write the config file");
    let sources = Sources {
        file: Some(path),
        flags: Vec::new(),
        env: vec![(
            "DATABASE_URL".into(),
            "postgres://app:secret@127.0.0.1:5432/app".into(),
        )],
    };
    let Ok(config) = Config::load(&sources) else {
        return;
    };
    assert!(!config.databases.is_empty());
    assert!(config.fleet_size >= 1 && config.max_packet_size >= 1024);
    for db in &config.databases {
        assert!(db.pool_size >= 1);
        assert!(config.database(&db.name).is_some());
        let _ = db.upstream.redacted();
    }
}

/// One scratch file per process (libFuzzer's -jobs run several).
fn config_path() -> PathBuf {
    std::env::temp_dir().join(format!("pgdyno-fuzz-config-{}.toml", std::process::id()))
}
