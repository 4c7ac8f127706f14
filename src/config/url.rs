//! Upstream connection strings: `postgres://user:pass@host:port/db?k=v` URLs
//! (DATABASE_URL, Heroku style) and libpq's `host=... dbname=...` form
//! (PgBouncer's `[databases]` style).

use std::path::PathBuf;

use super::tls::{ChannelBinding, SslMode};
use super::value::Parse;

/// Where and how to reach one PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: Host,
    pub port: u16,
    pub dbname: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Other parameters (`sslmode`, `options`, `application_name`, ...).
    pub params: Vec<(String, String)>,
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
        format!(
            "postgres://{}@{}:{}/{}",
            self.user.as_deref().unwrap_or(""),
            self.host,
            self.port,
            self.dbname.as_deref().unwrap_or("")
        )
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
    let host = take("host").filter(|h| !h.is_empty());
    let port = match take("port").filter(|p| !p.is_empty()) {
        None => 5432,
        Some(p) => p.parse().map_err(|_| format!("invalid port \"{p}\""))?,
    };
    let host = match host {
        Some(h) if h.starts_with('/') => Host::Unix(PathBuf::from(h)),
        Some(h) => Host::Tcp(h),
        None => Host::Tcp("localhost".into()),
    };
    let dbname = take("dbname").filter(|d| !d.is_empty());
    let user = take("user").filter(|u| !u.is_empty());
    let password = take("password");
    Ok(Upstream {
        host,
        port,
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
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unterminated [ in host")?;
        (h.to_owned(), after.strip_prefix(':').unwrap_or(""))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (decode(h)?, p),
            None => (decode(hostport)?, ""),
        }
    };
    if host.contains(',') {
        return Err("several hosts in one URL are not supported".into());
    }
    pairs.push(("host".into(), host));
    pairs.push(("port".into(), port.to_owned()));
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
    fn errors() {
        assert!(parse("mysql://x").is_err());
        assert!(parse("postgres://h:notaport/db").is_err());
        let e = parse("postgres://u:s3cr%zz@h/db").unwrap_err();
        assert!(!e.contains("s3cr"), "{e}");
        assert!(parse("host='unterminated").is_err());
    }
}
