//! `auth_type = hba`: the login method per connection, from `auth_hba_file`
//! in PostgreSQL's pg_hba.conf format, with PgBouncer's subset of it.
//!
//! - records: `local`, `host`, `hostssl`, `hostnossl`;
//! - databases: `all`, `sameuser`, `replication` (never a pooled
//!   connection), names, comma lists, `@file`;
//! - users: `all`, names, comma lists, `@file`;
//! - addresses: `all`, IPv4 and IPv6 with a prefix length or a mask
//!   column (an IPv4 range also matches IPv4-mapped IPv6 clients);
//! - methods: `trust`, `reject`, `password`, `md5`, `scram-sha-256`,
//!   `cert` (hostssl only), `peer` (local only); `map=` on `cert` and
//!   `peer` names a user name map of `auth_ident_file` (see [`super::ident`]).
//!
//! Anything else (`samerole`, `+group`, host names, `ident`...) is
//! refused when the file is read, naming the line, rather than matching
//! differently from PostgreSQL. The first record that matches decides;
//! none matching refuses the client, as PostgreSQL does.

use std::net::IpAddr;
use std::path::Path;

use crate::config::{AuthType, ConfigError};

/// How one client must log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// One of the exchanges `auth_type` also names.
    Auth(AuthType),
    /// A Unix-socket client whose operating-system user is the user it
    /// asks to be.
    Peer,
    Reject,
}

/// Where a client comes from, as the records match it.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// `None`: a Unix socket.
    pub ip: Option<IpAddr>,
    pub tls: bool,
    pub database: &'a str,
    pub user: &'a str,
}

impl std::fmt::Display for Origin<'_> {
    /// As PostgreSQL's "no pg_hba.conf entry" message names a client.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self.ip.map_or("[local]".to_owned(), |ip| ip.to_string());
        let tls = if self.tls {
            "SSL encryption"
        } else {
            "no encryption"
        };
        write!(
            f,
            "host \"{host}\", user \"{}\", database \"{}\", {tls}",
            self.user, self.database
        )
    }
}

/// The records of an HBA file, in order.
#[derive(Debug, Default)]
pub struct Hba {
    records: Vec<Record>,
}

#[derive(Debug)]
struct Record {
    kind: Kind,
    databases: Vec<Name>,
    users: Vec<Name>,
    /// `None`: `all` (and always for `local`).
    network: Option<Network>,
    method: Method,
    /// `map=`: the `auth_ident_file` map that says who may be whom.
    map: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, PartialEq, Eq)]
enum Name {
    All,
    SameUser,
    Replication,
    Is(String),
}

#[derive(Debug, Clone, Copy)]
struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Hba {
    /// Reads `path`; `@file` names are relative to its directory.
    pub fn load(path: &Path) -> Result<Hba, ConfigError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        load_file("auth_hba_file", path, |text| {
            Hba::parse(text, &|name| {
                let file = dir.join(name);
                std::fs::read_to_string(&file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))
            })
        })
    }

    /// Parses the file's text; `include` reads an `@file`. Errors name the
    /// line.
    pub fn parse(
        text: &str,
        include: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Hba, (usize, String)> {
        let records = parse_lines(text, |fields| Record::parse(fields, include))?;
        Ok(Hba { records })
    }

    /// The method of the first record that matches `origin`; `None` when
    /// none does (the client is refused as by a `reject` record, in other
    /// words).
    pub fn method(&self, origin: &Origin<'_>) -> Option<Method> {
        self.rule(origin).map(|(method, _)| method)
    }

    /// [`Hba::method`], with the record's user name map.
    pub fn rule(&self, origin: &Origin<'_>) -> Option<(Method, Option<&str>)> {
        self.records
            .iter()
            .find(|r| r.matches(origin))
            .map(|r| (r.method, r.map.as_deref()))
    }

    /// The user name maps the records name.
    pub fn maps(&self) -> impl Iterator<Item = &str> {
        self.records.iter().filter_map(|r| r.map.as_deref())
    }
}

impl Record {
    fn parse(
        mut fields: Vec<Vec<Token>>,
        include: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Record, String> {
        fields.reverse();
        let mut next = |what: &str| fields.pop().ok_or_else(|| format!("missing {what}"));
        let kind = match single(next("connection type")?, "connection type")?.as_str() {
            "local" => Kind::Local,
            "host" => Kind::Host,
            "hostssl" => Kind::HostSsl,
            "hostnossl" => Kind::HostNoSsl,
            other => return Err(format!("connection type \"{other}\" is not supported")),
        };
        let databases = names(next("database")?, include, true)?;
        let users = names(next("user")?, include, false)?;
        let network = match kind {
            Kind::Local => None,
            _ => {
                let addr = single(next("address")?, "address")?;
                network(&addr, &mut next)?
            }
        };
        let method_name = single(next("authentication method")?, "authentication method")?;
        let method = match method_name.as_str() {
            "trust" => Method::Auth(AuthType::Trust),
            "reject" => Method::Reject,
            "password" => Method::Auth(AuthType::Plain),
            "md5" => Method::Auth(AuthType::Md5),
            "scram-sha-256" => Method::Auth(AuthType::ScramSha256),
            "cert" if kind == Kind::HostSsl => Method::Auth(AuthType::Cert),
            "cert" => return Err("cert authentication is only supported on hostssl records".into()),
            "peer" if kind == Kind::Local => Method::Peer,
            "peer" => return Err("peer authentication is only supported on local records".into()),
            other => {
                return Err(format!(
                    "authentication method \"{other}\" is not supported"
                ))
            }
        };
        let mut map = None;
        while let Ok(option) = next("") {
            let option = single(option, "an option")?;
            let mappable = matches!(method, Method::Peer | Method::Auth(AuthType::Cert));
            match option.strip_prefix("map=") {
                Some(name) if mappable && !name.is_empty() => map = Some(name.to_owned()),
                Some(_) if !mappable => {
                    return Err(format!(
                        "\"{option}\": user name maps are for peer and cert records"
                    ))
                }
                _ => {
                    return Err(format!(
                        "authentication option \"{option}\" is not supported"
                    ))
                }
            }
        }
        Ok(Record {
            kind,
            databases,
            users,
            network,
            method,
            map,
        })
    }

    fn matches(&self, o: &Origin<'_>) -> bool {
        let kind = match (self.kind, o.ip) {
            (Kind::Local, None) => true,
            (Kind::Host, Some(_)) => true,
            (Kind::HostSsl, Some(_)) => o.tls,
            (Kind::HostNoSsl, Some(_)) => !o.tls,
            _ => false,
        };
        kind && self
            .network
            .is_none_or(|n| o.ip.is_some_and(|ip| n.contains(ip)))
            && self.databases.iter().any(|d| match d {
                Name::All => true,
                Name::SameUser => o.database == o.user,
                Name::Replication => false,
                Name::Is(name) => name == o.database,
            })
            && self.users.iter().any(|u| match u {
                Name::All => true,
                Name::Is(name) => name == o.user,
                Name::SameUser | Name::Replication => false,
            })
    }
}

impl Network {
    fn contains(self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A record's address: `all`, `addr/prefix`, or `addr` with a mask in the
/// next field.
fn network(
    text: &str,
    next: &mut dyn FnMut(&str) -> Result<Vec<Token>, String>,
) -> Result<Option<Network>, String> {
    if text == "all" {
        return Ok(None);
    }
    let bad = || {
        format!(
            "address \"{text}\" is not supported: give an IP address with a prefix \
             length or a mask, or all (not host names, samehost or samenet)"
        )
    };
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => {
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            (addr, prefix.parse::<u8>().map_err(|_| bad())?)
        }
        None => {
            let addr: IpAddr = text.parse().map_err(|_| bad())?;
            let mask = single(next("IP mask")?, "IP mask")?;
            (addr, mask_prefix(addr, &mask)?)
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok(Some(Network { addr, prefix }))
}

/// The prefix length a netmask like 255.255.0.0 stands for.
fn mask_prefix(addr: IpAddr, mask: &str) -> Result<u8, String> {
    let bad = || format!("IP mask \"{mask}\" is not a valid netmask for {addr}");
    let bits: u128 = match (addr, mask.parse::<IpAddr>().map_err(|_| bad())?) {
        (IpAddr::V4(_), IpAddr::V4(m)) => u128::from(u32::from(m)) << 96,
        (IpAddr::V6(_), IpAddr::V6(m)) => u128::from(m),
        _ => return Err(bad()),
    };
    let ones = bits.leading_ones();
    if bits.checked_shl(ones).unwrap_or(0) != 0 {
        return Err(bad());
    }
    let ones = if addr.is_ipv4() { ones.min(32) } else { ones };
    Ok(ones as u8)
}

/// One item of a field: its text, and whether it was quoted (a quoted
/// keyword is just a name).
#[derive(Debug)]
pub(super) struct Token {
    pub text: String,
    pub quoted: bool,
}

/// A field that must be one plain word.
fn single(field: Vec<Token>, what: &str) -> Result<String, String> {
    match <[Token; 1]>::try_from(field) {
        Ok([t]) => Ok(t.text),
        Err(_) => Err(format!("{what} must be a single word")),
    }
}

/// A database or user field: keywords, names, `@file` lists.
fn names(
    field: Vec<Token>,
    include: &dyn Fn(&str) -> Result<String, String>,
    database: bool,
) -> Result<Vec<Name>, String> {
    let mut out = Vec::new();
    for token in field {
        if token.quoted {
            out.push(Name::Is(token.text));
            continue;
        }
        match token.text.as_str() {
            "all" => out.push(Name::All),
            "sameuser" if database => out.push(Name::SameUser),
            "replication" if database => out.push(Name::Replication),
            "samerole" | "samegroup" if database => {
                return Err(format!("\"{}\" is not supported", token.text))
            }
            t if t.starts_with('+') => {
                return Err(format!("group membership (\"{t}\") is not supported"))
            }
            t if t.starts_with('/') => {
                return Err(format!("regular expressions (\"{t}\") are not supported"))
            }
            t => match t.strip_prefix('@') {
                Some(file) => {
                    let text = include(file)?;
                    for (_, line) in logical_lines(&text) {
                        for item in tokens(&line)?.into_iter().flatten() {
                            out.push(Name::Is(item.text));
                        }
                    }
                }
                None => out.push(Name::Is(token.text)),
            },
        }
    }
    Ok(out)
}

/// Reads the file `setting` names and parses it; errors name the setting,
/// the file and the line.
pub(super) fn load_file<T>(
    setting: &str,
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, (usize, String)>,
) -> Result<T, ConfigError> {
    let fail = |why: String| ConfigError(format!("invalid value for {setting}: {why}"));
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    parse(&text).map_err(|(line, why)| fail(format!("{}:{line}: {why}", path.display())))
}

/// Each line of `text` that holds fields, parsed by `parse`; an error
/// names its line.
pub(super) fn parse_lines<T>(
    text: &str,
    mut parse: impl FnMut(Vec<Vec<Token>>) -> Result<T, String>,
) -> Result<Vec<T>, (usize, String)> {
    let mut out = Vec::new();
    for (number, line) in logical_lines(text) {
        let fields = tokens(&line).map_err(|e| (number, e))?;
        if !fields.is_empty() {
            out.push(parse(fields).map_err(|e| (number, e))?);
        }
    }
    Ok(out)
}

/// The file's lines with comments removed and backslash continuations
/// joined, each with the number of its first line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = strip_comment(raw);
        let (n, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        match line.strip_suffix('\\') {
            Some(head) => {
                joined.push_str(head);
                joined.push(' ');
                pending = Some((n, joined));
            }
            None => {
                joined.push_str(line);
                out.push((n, joined));
            }
        }
    }
    out.extend(pending);
    out
}

/// The line up to a `#` outside double quotes.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Splits a line into fields (separated by blanks), each a comma list of
/// tokens; double quotes keep blanks and commas in a token.
fn tokens(line: &str) -> Result<Vec<Vec<Token>>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(fields);
        }
        let mut field = Vec::new();
        loop {
            let mut token = Token {
                text: String::new(),
                quoted: false,
            };
            let mut in_quotes = false;
            while let Some(&c) = chars.peek() {
                if !in_quotes && (c.is_whitespace() || c == ',') {
                    break;
                }
                chars.next();
                if c == '"' {
                    in_quotes = !in_quotes;
                    token.quoted = true;
                } else {
                    token.text.push(c);
                }
            }
            if in_quotes {
                return Err("unterminated quoted string".into());
            }
            field.push(token);
            if chars.next_if_eq(&',').is_none() {
                break;
            }
        }
        fields.push(field);
    }
}

/// The name of the operating-system user `uid`, from /etc/passwd (what
/// `peer` compares with the user a client asks to be).
pub fn system_user(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hba(text: &str) -> Hba {
        Hba::parse(text, &|name| match name {
            "admins" => Ok("alice, bob\n# a comment\ncarol\n".into()),
            _ => Err(format!("no file {name}")),
        })
        .unwrap_or_else(|(line, why)| panic!("line {line}: {why}"))
    }

    fn origin<'a>(ip: Option<&str>, tls: bool, database: &'a str, user: &'a str) -> Origin<'a> {
        Origin {
            ip: ip.map(|ip| ip.parse().unwrap()),
            tls,
            database,
            user,
        }
    }

    const FILE: &str = r#"
# TYPE  DATABASE        USER     ADDRESS          METHOD
local   all             all                       peer
hostssl all             @admins  0.0.0.0/0        cert
host    "all"           app      10.0.0.0 255.0.0.0 md5   # a quoted keyword is a name
host    sameuser        all      192.168.1.0/24   password
hostnossl appdb,other   all      127.0.0.1/32     scram-sha-256
host    all             mallory  all              reject
host    all             all      ::1/128          trust
host    appdb           all      all \
                                                  md5
"#;

    #[test]
    fn peer_and_cert_records_name_their_map() {
        let h = hba("local all all peer map=ops\nhostssl all all all cert map=certs\n");
        let local = origin(None, false, "d", "postgres");
        assert_eq!(h.rule(&local), Some((Method::Peer, Some("ops"))));
        let tls = origin(Some("10.0.0.1"), true, "d", "carol");
        let cert = Method::Auth(AuthType::Cert);
        assert_eq!(h.rule(&tls), Some((cert, Some("certs"))));
        assert_eq!(h.maps().collect::<Vec<_>>(), ["ops", "certs"]);
    }

    #[test]
    fn the_first_matching_record_decides() {
        let h = hba(FILE);
        let cases = [
            (origin(None, false, "appdb", "x"), Method::Peer),
            (
                origin(Some("8.8.8.8"), true, "d", "bob"),
                Method::Auth(AuthType::Cert),
            ),
            // Not over TLS: bob falls to the last record.
            (
                origin(Some("8.8.8.8"), false, "appdb", "bob"),
                Method::Auth(AuthType::Md5),
            ),
            // "all" quoted is a database called all.
            (
                origin(Some("10.1.2.3"), false, "all", "app"),
                Method::Auth(AuthType::Md5),
            ),
            (origin(Some("10.1.2.3"), false, "d", "app"), Method::Reject),
            (
                origin(Some("192.168.1.9"), false, "sam", "sam"),
                Method::Auth(AuthType::Plain),
            ),
            (
                origin(Some("192.168.1.9"), false, "sam", "tom"),
                Method::Reject,
            ),
            (
                origin(Some("127.0.0.1"), false, "other", "x"),
                Method::Auth(AuthType::ScramSha256),
            ),
            (
                origin(Some("127.0.0.1"), true, "other", "x"),
                Method::Reject,
            ),
            (
                origin(Some("::ffff:127.0.0.1"), false, "appdb", "x"),
                Method::Auth(AuthType::ScramSha256),
            ),
            (
                origin(Some("127.0.0.1"), false, "appdb", "mallory"),
                Method::Auth(AuthType::ScramSha256),
            ),
            (
                origin(Some("127.0.0.2"), false, "appdb", "mallory"),
                Method::Reject,
            ),
            (
                origin(Some("::1"), false, "d", "x"),
                Method::Auth(AuthType::Trust),
            ),
            (
                origin(Some("::2"), false, "appdb", "x"),
                Method::Auth(AuthType::Md5),
            ),
        ];
        for (o, want) in cases {
            assert_eq!(h.method(&o).unwrap_or(Method::Reject), want, "{o}");
        }
        assert!(h.method(&origin(Some("::2"), false, "d", "x")).is_none());
        assert!(h
            .method(&origin(Some("::2"), false, "d", "mallory"))
            .is_some());
    }

    #[test]
    fn what_pgdyno_cannot_match_as_postgresql_would_is_refused_naming_the_line() {
        let cases = [
            ("host all all example.com md5", "not supported"),
            ("host all all samenet md5", "not supported"),
            ("host all all 10.0.0.0/33 md5", "not supported"),
            (
                "host all all 10.0.0.0 255.0.255.0 md5",
                "not a valid netmask",
            ),
            ("host samerole all all md5", "not supported"),
            ("host all +staff all md5", "group membership"),
            ("host all all all ident", "\"ident\" is not supported"),
            ("host all all all peer", "only supported on local"),
            ("host all all all cert", "only supported on hostssl"),
            ("local all all md5 map=x", "maps are for peer and cert"),
            ("local all all peer clientcert=1", "option \"clientcert=1\""),
            ("hostgssenc all all all md5", "connection type"),
            ("local all @missing md5", "no file missing"),
            ("local \"all md5", "unterminated"),
            ("local all all", "missing authentication method"),
        ];
        for (line, want) in cases {
            let text = format!("# first\n{line}\n");
            let (n, why) =
                Hba::parse(&text, &|name| Err(format!("no file {name}"))).expect_err(line);
            assert_eq!(n, 2, "{line}");
            assert!(why.contains(want), "{line}: {why}");
        }
    }

    #[test]
    fn masks_and_prefixes() {
        for (addr, mask, prefix) in [
            ("10.0.0.0", "255.0.0.0", 8),
            ("10.0.0.0", "255.255.255.255", 32),
            ("10.0.0.0", "0.0.0.0", 0),
            ("fe80::", "ffff:ffff::", 32),
        ] {
            assert_eq!(
                mask_prefix(addr.parse().unwrap(), mask),
                Ok(prefix),
                "{mask}"
            );
        }
        assert!(mask_prefix("10.0.0.0".parse().unwrap(), "ffff::").is_err());
    }

    #[test]
    fn root_is_uid_zero() {
        assert_eq!(system_user(0).as_deref(), Some("root"));
    }
}
