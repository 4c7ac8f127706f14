//! `auth_ident_file`: user name maps in PostgreSQL's pg_ident.conf format,
//! for `auth_hba_file` records with `map=`: which operating-system user
//! (`peer`) or certificate common name (`cert`) may log in as which user.
//!
//! A line is `map-name system-name user-name`. A system name starting with
//! `/` is a regular expression (unanchored unless it says `^` or `$`, as in
//! PostgreSQL), and `\1` in the user name stands for its first capture
//! group; the user name `all` lets the system name in as anyone. Group
//! membership (`+group`) and user-name expressions are refused when the
//! file is read, naming the line.

use std::path::Path;

use regex::Regex;

use super::hba::{load_file, parse_lines, Token};
use crate::config::ConfigError;

/// The maps, line by line.
#[derive(Debug, Default)]
pub struct Ident {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    map: String,
    system: System,
    user: User,
}

#[derive(Debug)]
enum System {
    Is(String),
    Pattern(Regex),
}

#[derive(Debug)]
enum User {
    All,
    /// May hold `\1`, under a pattern.
    Is(String),
}

impl Ident {
    pub fn load(path: &Path) -> Result<Ident, ConfigError> {
        load_file("auth_ident_file", path, Ident::parse)
    }

    /// Errors name the line.
    pub fn parse(text: &str) -> Result<Ident, (usize, String)> {
        let entries = parse_lines(text, Entry::parse)?;
        Ok(Ident { entries })
    }

    /// Whether map `map` has any line.
    pub fn has_map(&self, map: &str) -> bool {
        self.entries.iter().any(|e| e.map == map)
    }

    /// Whether map `map` lets `system` (an operating-system user, or a
    /// certificate's CN) log in as `user`.
    pub fn permits(&self, map: &str, system: &str, user: &str) -> bool {
        self.entries
            .iter()
            .filter(|e| e.map == map)
            .any(|e| e.permits(system, user))
    }
}

impl Entry {
    fn parse(fields: Vec<Vec<Token>>) -> Result<Entry, String> {
        let words: Vec<_> = fields
            .into_iter()
            .map(|field| match <[_; 1]>::try_from(field) {
                Ok([token]) => Ok(token),
                Err(_) => Err("a field must be one name (no comma lists)".to_owned()),
            })
            .collect::<Result<_, _>>()?;
        let [map, system, user] = <[_; 3]>::try_from(words)
            .map_err(|_| "expected three fields: map name, system user name, user name")?;
        let system = match system.text.strip_prefix('/') {
            Some(pattern) if !system.quoted => System::Pattern(
                Regex::new(pattern)
                    .map_err(|e| format!("invalid regular expression \"{pattern}\": {e}"))?,
            ),
            _ => System::Is(system.text),
        };
        let user = match user.text.as_str() {
            "all" if !user.quoted => User::All,
            t if !user.quoted && (t.starts_with('+') || t.starts_with('/')) => {
                return Err(format!(
                    "\"{t}\": group membership and regular expressions are not supported \
                     in the user name"
                ))
            }
            _ => User::Is(user.text),
        };
        Ok(Entry {
            map: map.text,
            system,
            user,
        })
    }

    fn permits(&self, system: &str, user: &str) -> bool {
        let captured = match &self.system {
            System::Is(name) if name == system => None,
            System::Is(_) => return false,
            System::Pattern(re) => match re.captures(system) {
                Some(c) => Some(c.get(1).map_or("", |m| m.as_str()).to_owned()),
                None => return false,
            },
        };
        match &self.user {
            User::All => true,
            User::Is(name) => match captured {
                Some(group) => name.replace("\\1", &group) == user,
                None => name == user,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_patterns_and_all() {
        let ident = Ident::parse(
            "# map  system  user\n\
             ops    root    postgres\n\
             ops    alice   alice\n\
             certs  /^(.*)@example\\.com$  \\1\n\
             any    bob     all\n\
             quoted \"/x\"   \"all\"\n",
        )
        .unwrap();
        assert!(ident.permits("ops", "root", "postgres"));
        assert!(
            !ident.permits("ops", "root", "alice"),
            "each line its own pair"
        );
        assert!(ident.permits("ops", "alice", "alice"));
        assert!(!ident.permits("other", "root", "postgres"), "another map");
        assert!(ident.permits("certs", "carol@example.com", "carol"));
        assert!(!ident.permits("certs", "carol@example.com", "dave"));
        assert!(!ident.permits("certs", "carol@example.org", "carol"));
        assert!(ident.permits("any", "bob", "whoever"));
        // Quoted: a name, not a pattern nor a keyword.
        assert!(ident.permits("quoted", "/x", "all"));
        assert!(!ident.permits("quoted", "/x", "someone"));
        assert!(ident.has_map("certs") && !ident.has_map("nope"));
    }

    #[test]
    fn unsupported_forms_name_their_line() {
        for (text, want) in [
            ("m root\n", "three fields"),
            ("m root postgres extra\n", "three fields"),
            ("m a,b postgres\n", "one name"),
            ("m /([ postgres\n", "regular expression"),
            ("m root +admins\n", "group membership"),
            ("m root /^p\n", "regular expressions"),
        ] {
            let (line, why) = Ident::parse(&format!("# first\n{text}")).unwrap_err();
            assert_eq!(line, 2, "{text}");
            assert!(why.contains(want), "{text}: {why}");
        }
    }
}
