//! Who may log in, with what secret, and how pgdyno logs in to PostgreSQL
//! on their behalf.
//!
//! - [`scram`]: SCRAM-SHA-256 secrets and the server side of the exchange;
//! - [`client`]: the authentication exchange with a client (trust, plain,
//!   md5, SCRAM);
//! - [`query`]: `auth_query`, for users the auth file does not list;
//! - [`hba`]: `auth_type = hba`, the login method per connection;
//! - [`ident`]: the user name maps its `peer` and `cert` records name;
//! - this file: secrets and the user list (PgBouncer's `userlist.txt`
//!   format, plus the users of upstream URLs).

pub mod client;
pub mod hba;
pub mod ident;
pub mod query;
pub mod scram;
pub mod throttle;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use md5::{Digest, Md5};

use crate::config::{AuthType, Config, ConfigError};
use scram::ScramSecret;

/// A user's stored secret.
#[derive(Debug)]
pub enum Secret {
    /// The password itself; its SCRAM secret is derived once, on first use.
    Plain {
        password: String,
        scram: OnceLock<ScramSecret>,
    },
    /// `md5` + md5hex(password + user).
    Md5(String),
    Scram(ScramSecret),
}

impl Secret {
    pub fn parse(text: &str) -> Secret {
        if let Some(scram) = ScramSecret::parse(text) {
            return Secret::Scram(scram);
        }
        let is_md5 = text.len() == 35
            && text.starts_with("md5")
            && text[3..].bytes().all(|b| b.is_ascii_hexdigit());
        if is_md5 {
            Secret::Md5(text.to_ascii_lowercase())
        } else {
            Secret::plain(text)
        }
    }

    pub fn plain(password: &str) -> Secret {
        Secret::Plain {
            password: password.to_owned(),
            scram: OnceLock::new(),
        }
    }

    /// The SCRAM secret, if one can be had (not from an md5 hash); one made
    /// from a password has `iterations` (`scram_iterations`).
    pub fn scram(&self, iterations: u32) -> Option<&ScramSecret> {
        match self {
            Secret::Plain { password, scram } => {
                Some(scram.get_or_init(|| ScramSecret::from_password(password, iterations)))
            }
            Secret::Scram(s) => Some(s),
            Secret::Md5(_) => None,
        }
    }

    /// `md5` + md5hex(password + user), if one can be had (not from SCRAM).
    pub fn md5(&self, user: &str) -> Option<String> {
        match self {
            Secret::Plain { password, .. } => Some(md5_secret(password, user)),
            Secret::Md5(m) => Some(m.clone()),
            Secret::Scram(_) => None,
        }
    }

    /// Whether a cleartext password matches.
    pub fn verify_password(&self, user: &str, password: &str) -> bool {
        match self {
            Secret::Plain { password: p, .. } => {
                constant_time_eq(p.as_bytes(), password.as_bytes())
            }
            Secret::Md5(m) => constant_time_eq(m.as_bytes(), md5_secret(password, user).as_bytes()),
            Secret::Scram(s) => s.verify_password(password),
        }
    }

    pub fn password(&self) -> Option<&str> {
        match self {
            Secret::Plain { password, .. } => Some(password),
            _ => None,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `md5` + md5hex(password + user): what PostgreSQL stores.
pub fn md5_secret(password: &str, user: &str) -> String {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    format!("md5{}", hex(&h.finalize()))
}

/// The md5 response to a salt, from a stored md5 secret: `md5` +
/// md5hex(md5hex(password + user) + salt).
pub fn md5_response(secret: &str, salt: [u8; 4]) -> String {
    let mut h = Md5::new();
    h.update(&secret.as_bytes()[3..]);
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The users that may log in and their secrets.
#[derive(Debug, Default)]
pub struct Users {
    secrets: HashMap<String, Arc<Secret>>,
    /// `auth_hba_file`'s rules, under `auth_type = hba`.
    pub hba: Option<hba::Hba>,
    /// `auth_ident_file`'s user name maps, for those rules' `map=`.
    pub ident: Option<ident::Ident>,
}

impl Users {
    /// From `auth_file`, plus each upstream URL's user and password (the
    /// file wins where both name a user).
    pub fn load(config: &Config) -> Result<Users, ConfigError> {
        let mut users = Users::default();
        for db in &config.databases {
            if let (Some(user), Some(password)) = (&db.upstream.user, &db.upstream.password) {
                users
                    .secrets
                    .entry(user.clone())
                    .or_insert_with(|| Arc::new(Secret::plain(password)));
            }
        }
        if let Some(path) = &config.auth_file {
            for (user, secret) in read_userlist(path)? {
                users.secrets.insert(user, Arc::new(secret));
            }
        }
        if config.auth_type == AuthType::Hba {
            if let Some(path) = &config.auth_hba_file {
                users.hba = Some(hba::Hba::load(path)?);
            }
            if let Some(path) = &config.auth_ident_file {
                users.ident = Some(ident::Ident::load(path)?);
            }
            let mut maps = users.hba.iter().flat_map(|h| h.maps());
            let missing = maps.find(|m| !users.ident.as_ref().is_some_and(|i| i.has_map(m)));
            if let Some(missing) = missing {
                return Err(ConfigError(format!(
                    "invalid value for auth_hba_file: map {missing:?} is not in auth_ident_file{}",
                    if config.auth_ident_file.is_none() {
                        " (which is not set)"
                    } else {
                        ""
                    }
                )));
            }
        }
        // Under hba, records that need no password (trust, peer, cert) may
        // be all there is.
        let passwordless = matches!(
            config.auth_type,
            AuthType::Trust | AuthType::Cert | AuthType::Hba
        );
        if users.secrets.is_empty() && !passwordless {
            return Err(ConfigError(
                "invalid value for auth_type: no user can log in; give the upstream URL a \
                 user and password, set auth_file, or use auth_type = trust"
                    .into(),
            ));
        }
        Ok(users)
    }

    pub fn get(&self, user: &str) -> Option<Arc<Secret>> {
        self.secrets.get(user).cloned()
    }
}

fn read_userlist(path: &Path) -> Result<Vec<(String, Secret)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "invalid value for auth_file: cannot read {}: {e}",
            path.display()
        ))
    })?;
    parse_userlist(&text).map_err(|(line, why)| {
        ConfigError(format!(
            "invalid value for auth_file: {}:{line}: {why}",
            path.display()
        ))
    })
}

/// `"user" "secret"` per line; `""` inside quotes is one `"`; lines not
/// starting with `"` are comments, as in PgBouncer.
pub fn parse_userlist(text: &str) -> Result<Vec<(String, Secret)>, (usize, &'static str)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if !line.starts_with('"') {
            continue;
        }
        let (user, rest) = quoted(line).ok_or((n + 1, "expected \"user\" \"secret\""))?;
        let (secret, _) =
            quoted(rest.trim_start()).ok_or((n + 1, "expected \"user\" \"secret\""))?;
        out.push((user, Secret::parse(&secret)));
    }
    Ok(out)
}

fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('"')?.char_indices().peekable();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            if chars.next_if(|&(_, c)| c == '"').is_some() {
                out.push('"');
            } else {
                return Some((out, &s[i + 2..]));
            }
        } else {
            out.push(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userlist_formats() {
        let scram = postgres_protocol::password::scram_sha_256(b"pw3");
        let text = format!(
            "; comment\n\"alice\" \"pw1\"\n\"bob\" \"{}\"\n\"car\"\"ol\" \"{scram}\" extra\n",
            md5_secret("pw2", "bob")
        );
        let users = parse_userlist(&text).unwrap();
        assert_eq!(users.len(), 3);
        assert_eq!(users[2].0, "car\"ol");
        assert!(users[0].1.verify_password("alice", "pw1"));
        assert!(matches!(users[1].1, Secret::Md5(_)));
        assert!(users[1].1.verify_password("bob", "pw2"));
        assert!(!users[1].1.verify_password("bob", "pw1"));
        assert!(users[2].1.verify_password("car\"ol", "pw3"));
        assert!(parse_userlist("\"unterminated\n").is_err());
    }

    #[test]
    fn md5_matches_postgres_protocol() {
        let salt = [1, 2, 3, 4];
        let ours = md5_response(&md5_secret("pw", "u"), salt);
        let theirs = postgres_protocol::authentication::md5_hash(b"u", b"pw", salt);
        assert_eq!(ours, theirs);
    }
}
