//! Upstream connection strings: `postgres://user:pass@host:port/db?k=v` URLs
//! (DATABASE_URL, Heroku style) and libpq's `host=... dbname=...` form
//! (PgBouncer's `[databases]` style). Either may name several hosts, as
//! libpq's do (`host=a,b port=5432,5433`, `postgres://a:5432,b:5433/db`),
//! with PgBouncer's `load_balance_hosts` saying how new backends pick one.

use std::path::PathBuf;

use super::tls::{ChannelBinding, SslMode};
use super::value::Parse;

/// Where and how to reach one PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: Host,
    pub port: u16,
    /// The hosts after the first, with their ports, for a database that
    /// names several (each a server of the same database: replicas, or a
    /// primary and its standbys).
    pub more_hosts: Vec<(Host, u16)>,
    pub load_balance: LoadBalance,
    /// libpq's `target_session_attrs`: what a server must be to be used.
    pub session_attrs: SessionAttrs,
    pub dbname: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Other parameters (`sslmode`, `options`, `application_name`, ...).
    pub params: Vec<(String, String)>,
}

/// PgBouncer's `load_balance_hosts`: which of several hosts a new backend
/// tries first. Either way it goes on down the list past a host it cannot
/// connect to (as libpq does), before giving up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadBalance {
    /// Each new backend starts at the host after the last one's.
    #[default]
    RoundRobin,
    /// Each new backend starts at the first host.
    Disable,
}

impl LoadBalance {
    pub fn name(self) -> &'static str {
        match self {
            LoadBalance::RoundRobin => "round-robin",
            LoadBalance::Disable => "disable",
        }
    }
}

/// libpq's `target_session_attrs`: which servers of a database's hosts a
/// backend may use, from what the server reports at login
/// (`in_hot_standby`, `default_transaction_read_only`: PostgreSQL 14 on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionAttrs {
    #[default]
    Any,
    /// Takes read-write transactions by default: not a standby, and
    /// `default_transaction_read_only` off.
    ReadWrite,
    /// The opposite.
    ReadOnly,
    /// Not a standby.
    Primary,
    Standby,
    /// A standby if any host is one, else any.
    PreferStandby,
}

impl SessionAttrs {
    const ALL: [SessionAttrs; 6] = [
        SessionAttrs::Any,
        SessionAttrs::ReadWrite,
        SessionAttrs::ReadOnly,
        SessionAttrs::Primary,
        SessionAttrs::Standby,
        SessionAttrs::PreferStandby,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "primary",
            SessionAttrs::Standby => "standby",
            SessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    /// Whether a server in hot standby or not (`standby`), read-only by
    /// default or not (`read_only`), will do.
    pub fn accepts(self, standby: bool, read_only: bool) -> bool {
        match self {
            SessionAttrs::Any | SessionAttrs::PreferStandby => true,
            SessionAttrs::ReadWrite => !standby && !read_only,
            SessionAttrs::ReadOnly => standby || read_only,
            SessionAttrs::Primary => !standby,
            SessionAttrs::Standby => standby,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    /// A directory holding `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

/// The name, or the socket's directory.
impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Tcp(h) => f.write_str(h),
            Host::Unix(p) => p.display().fmt(f),
        }
    }
}

impl Upstream {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A display form without the password, for logs and SHOW DATABASES.
    pub fn redacted(&self) -> String {
        let hosts: Vec<String> = self
            .hosts()
            .map(|(h, p)| match h {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{p}"),
                h => format!("{h}:{p}"),
            })
            .collect();
        format!(
            "postgres://{}@{}/{}",
            self.user.as_deref().unwrap_or(""),
            hosts.join(","),
            self.dbname.as_deref().unwrap_or("")
        )
    }

    /// Every host with its port, in the order given.
    pub fn hosts(&self) -> impl Iterator<Item = (&Host, u16)> {
        std::iter::once((&self.host, self.port)).chain(self.more_hosts.iter().map(|(h, p)| (h, *p)))
    }

    /// The hosts as PgBouncer's SHOW DATABASES lists them: `a,b`.
    pub fn host_list(&self) -> String {
        let hosts: Vec<String> = self.hosts().map(|(h, _)| h.to_string()).collect();
        hosts.join(",")
    }

    /// The same upstream with only its `i`th host (modulo their number),
    /// for one connection.
    pub fn only_host(&self, i: usize) -> Upstream {
        let (host, port) = self.hosts().nth(i % (1 + self.more_hosts.len())).unwrap();
        Upstream {
            host: host.clone(),
            port,
            more_hosts: Vec::new(),
            ..self.clone()
        }
    }
}

/// Parses a URL or a key=value connection string.
pub fn parse(s: &str) -> Result<Upstream, String> {
    let s = s.trim();
    let mut pairs = if let Some(rest) = s
        .strip_prefix("postgres://")
        .or_else(|| s.strip_prefix("postgresql://"))
    {
        parse_url(rest)?
    } else if s.contains('=') {
        parse_keywords(s)?
    } else {
        return Err(
            "expected postgres://user:password@host:port/dbname or host=... dbname=...".into(),
        );
    };
    for (key, value) in &pairs {
        let valid = match key.as_str() {
            "sslmode" => SslMode::parse(value).map(drop),
            "channel_binding" => ChannelBinding::parse(value).map(drop),
            _ => Ok(()),
        };
        valid.map_err(|why| format!("invalid {key}=\"{value}\": {why}"))?;
    }
    // The last of a repeated key wins, and none of them stays behind.
    let mut take = |key: &str| {
        let value = pairs.iter().rev().find(|(k, _)| k == key)?.1.clone();
        pairs.retain(|(k, _)| k != key);
        Some(value)
    };
    let hosts = take("host").unwrap_or_default();
    let hosts: Vec<&str> = hosts.split(',').collect();
    let ports = take("port").unwrap_or_default();
    let ports = ports
        .split(',')
        .map(|p| match p.trim() {
            "" => Ok(5432),
            p => p.parse().map_err(|_| format!("invalid port \"{p}\"")),
        })
        .collect::<Result<Vec<u16>, String>>()?;
    // As libpq: one port for every host, or one per host.
    if ports.len() != 1 && ports.len() != hosts.len() {
        return Err(format!(
            "{} hosts and {} ports: give one port, or one per host",
            hosts.len(),
            ports.len()
        ));
    }
    let mut hosts = hosts.iter().enumerate().map(|(i, h)| {
        let host = match h.trim() {
            "" => Host::Tcp("localhost".into()),
            h if h.starts_with('/') => Host::Unix(PathBuf::from(h)),
            h => Host::Tcp(h.to_owned()),
        };
        (host, ports[i.min(ports.len() - 1)])
    });
    let (host, port) = hosts.next().expect("split gives at least one");
    let more_hosts = hosts.collect();
    let load_balance = match take("load_balance_hosts").as_deref() {
        None | Some("round-robin") => LoadBalance::RoundRobin,
        Some("disable") => LoadBalance::Disable,
        Some(other) => {
            return Err(format!(
                "invalid load_balance_hosts=\"{other}\": use round-robin or disable"
            ))
        }
    };
    let session_attrs = match take("target_session_attrs") {
        None => SessionAttrs::Any,
        Some(text) => SessionAttrs::ALL
            .into_iter()
            .find(|a| a.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = SessionAttrs::ALL.iter().map(|a| a.name()).collect();
                format!(
                    "invalid target_session_attrs=\"{text}\": use one of {}",
                    names.join(", ")
                )
            })?,
    };
    let dbname = take("dbname").filter(|d| !d.is_empty());
    let user = take("user").filter(|u| !u.is_empty());
    let password = take("password");
    Ok(Upstream {
        host,
        port,
        more_hosts,
        load_balance,
        session_attrs,
        dbname,
        user,
        password,
        params: pairs,
    })
}

fn parse_url(rest: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        pairs.push(("user".into(), decode(user)?));
        if let Some(p) = password {
            pairs.push(("password".into(), decode(p)?));
        }
    }
    // libpq's `host1:port1,host2:port2`, each perhaps an [IPv6] address.
    let (mut hosts, mut ports) = (Vec::new(), Vec::new());
    for one in hostport.split(',') {
        let (host, port) = if let Some(v6) = one.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unterminated [ in host")?;
            (h.to_owned(), after.strip_prefix(':').unwrap_or(""))
        } else {
            match one.rsplit_once(':') {
                Some((h, p)) => (decode(h)?, p),
                None => (decode(one)?, ""),
            }
        };
        if host.contains(',') {
            return Err("a host name may not contain a comma".into());
        }
        hosts.push(host);
        ports.push(port);
    }
    // Each host its own port (5432 where none is given).
    pairs.push(("host".into(), hosts.join(",")));
    pairs.push(("port".into(), ports.join(",")));
    pairs.push(("dbname".into(), decode(path)?));
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or(format!("invalid URL parameter \"{kv}\""))?;
        pairs.push((decode(k)?, decode(v)?));
    }
    Ok(pairs)
}

fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("invalid percent-encoding (a % must be followed by two hex digits)")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| "a percent-encoded part is not UTF-8 once decoded".to_owned())
}

/// libpq keyword/value form: `host=h port=5432 dbname='my db'`.
fn parse_keywords(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|&c| c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("missing \"=\" after \"{key}\""));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value for \"{key}\"")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_percent_decoding_and_the_last_repeated_key_wins() {
        assert!(parse("postgres://u:p%+f@h/d").is_err());
        assert!(parse("postgres://u:p%-1@h/d").is_err());
        assert_eq!(
            parse("postgres://u:p%2F@h/d").unwrap().password.as_deref(),
            Some("p/")
        );
        let u = parse("host=a host=b dbname=x user=u user=v").unwrap();
        assert_eq!(u.host, Host::Tcp("b".into()));
        assert_eq!(u.user.as_deref(), Some("v"));
        assert!(u.params.is_empty(), "{:?}", u.params);
    }

    #[test]
    fn heroku_url() {
        let u = parse(
            "postgres://u%40x:p%3Ass@ec2-1-2-3-4.compute-1.amazonaws.com:5433/d1?sslmode=prefer",
        )
        .unwrap();
        assert_eq!(
            u.host,
            Host::Tcp("ec2-1-2-3-4.compute-1.amazonaws.com".into())
        );
        assert_eq!(u.port, 5433);
        assert_eq!(u.user.as_deref(), Some("u@x"));
        assert_eq!(u.password.as_deref(), Some("p:ss"));
        assert_eq!(u.dbname.as_deref(), Some("d1"));
        assert_eq!(u.param("sslmode"), Some("prefer"));
        assert!(parse("postgres://h/d?sslmode=require").is_ok());
        assert!(parse("postgres://h/d?sslmode=required").is_err());
        assert!(parse("postgres://h/d?channel_binding=maybe").is_err());
        assert!(!u.redacted().contains("p:ss"));
    }

    #[test]
    fn url_defaults_and_unix_host() {
        let u = parse("postgresql:///db?host=/var/run/postgresql").unwrap();
        assert_eq!(u.host, Host::Unix("/var/run/postgresql".into()));
        assert_eq!(u.port, 5432);
        let v = parse("postgres://[::1]:6000/x").unwrap();
        assert_eq!(v.host, Host::Tcp("::1".into()));
        assert_eq!(v.port, 6000);
    }

    #[test]
    fn keyword_form() {
        let u =
            parse("host=127.0.0.1 port = 6000 dbname='my db' user=bob password=it\\'s").unwrap();
        assert_eq!(u.dbname.as_deref(), Some("my db"));
        assert_eq!(u.password.as_deref(), Some("it's"));
        assert_eq!(u.port, 6000);
    }

    #[test]
    fn several_hosts_as_libpq_gives_them() {
        let u = parse("postgres://u@a:5433,[::1],c:6000/d?load_balance_hosts=disable").unwrap();
        let hosts: Vec<(String, u16)> = u.hosts().map(|(h, p)| (h.to_string(), p)).collect();
        let want = [("a", 5433), ("::1", 5432), ("c", 6000)].map(|(h, p)| (h.to_owned(), p));
        assert_eq!(hosts, want);
        assert_eq!(u.load_balance, LoadBalance::Disable);
        assert!(u.params.is_empty(), "{:?}", u.params);
        assert_eq!(u.host_list(), "a,::1,c");
        assert_eq!(u.redacted(), "postgres://u@a:5433,[::1]:5432,c:6000/d");
        let second = u.only_host(4);
        assert_eq!(
            (second.host.clone(), second.port),
            (Host::Tcp("::1".into()), 5432)
        );
        assert!(second.more_hosts.is_empty());

        // One port for all, or one each.
        let k = parse("host=a,/run/pg port=6001 dbname=d").unwrap();
        assert_eq!(k.load_balance, LoadBalance::RoundRobin);
        let hosts: Vec<(Host, u16)> = k.hosts().map(|(h, p)| (h.clone(), p)).collect();
        assert_eq!(
            hosts,
            [
                (Host::Tcp("a".into()), 6001),
                (Host::Unix("/run/pg".into()), 6001)
            ]
        );
        let each = parse("host=a,b port=1,2 load_balance_hosts=round-robin").unwrap();
        assert_eq!(each.more_hosts, [(Host::Tcp("b".into()), 2)]);
        assert!(parse("host=a,b,c port=1,2")
            .unwrap_err()
            .contains("3 hosts and 2 ports"));
        assert!(parse("host=a,b load_balance_hosts=random")
            .unwrap_err()
            .contains("round-robin or disable"));
        assert!(parse("postgres://a%2Cb/d").is_err());
    }

    #[test]
    fn target_session_attrs_as_libpq_names_them() {
        let u = parse("host=a,b target_session_attrs=read-write").unwrap();
        assert_eq!(u.session_attrs, SessionAttrs::ReadWrite);
        assert!(u.params.is_empty(), "{:?}", u.params);
        assert_eq!(parse("host=a").unwrap().session_attrs, SessionAttrs::Any);
        let e = parse("postgres://a/d?target_session_attrs=master").unwrap_err();
        assert!(
            e.contains("read-write") && e.contains("prefer-standby"),
            "{e}"
        );
        // (standby, read_only) of a primary, a read-only primary, a standby.
        let kinds = [(false, false), (false, true), (true, true)];
        let accepted = |a: SessionAttrs| kinds.map(|(s, r)| a.accepts(s, r));
        assert_eq!(accepted(SessionAttrs::ReadWrite), [true, false, false]);
        assert_eq!(accepted(SessionAttrs::ReadOnly), [false, true, true]);
        assert_eq!(accepted(SessionAttrs::Primary), [true, true, false]);
        assert_eq!(accepted(SessionAttrs::Standby), [false, false, true]);
        assert_eq!(accepted(SessionAttrs::Any), [true, true, true]);
    }

    #[test]
    fn errors() {
        assert!(parse("mysql://x").is_err());
        assert!(parse("postgres://h:notaport/db").is_err());
        let e = parse("postgres://u:s3cr%zz@h/db").unwrap_err();
        assert!(!e.contains("s3cr"), "{e}");
        assert!(parse("host='unterminated").is_err());
    }
}
