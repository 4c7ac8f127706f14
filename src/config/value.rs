//! Raw setting values with where each came from, and their typed parsing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::settings::{self, canonical};
use super::{AuthType, ConfigError, LogFormat, PoolMode};

#[derive(Debug, Clone)]
pub enum Origin {
    File(String),
    Env(String),
    Flag(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(where_) => write!(f, "config file, {where_}"),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::Flag(flag) => write!(f, "flag --{flag}"),
        }
    }
}

/// Values by canonical setting name; a later `add` replaces an earlier one.
#[derive(Debug, Default)]
pub struct Raw {
    values: BTreeMap<String, (toml::Value, Origin)>,
}

impl Raw {
    /// Adds the top-level settings of a TOML file; returns its `[databases]` table.
    /// The file's settings; returns its `[databases]` and `[users]` tables.
    /// Adds the file's settings; returns its `[databases]`, `[users]` and
    /// `[peers]` tables.
    pub fn add_file(&mut self, path: &Path) -> Result<[Option<toml::Table>; 3], ConfigError> {
        let mut table = super::read_file(path)?;
        let mut section = |name: &str| match table.remove(name) {
            None => Ok(None),
            Some(toml::Value::Table(t)) => Ok(Some(t)),
            Some(_) => Err(ConfigError(format!(
                "invalid value for {name}: expected a [{name}] table"
            ))),
        };
        let sections = [section("databases")?, section("users")?, section("peers")?];
        for (key, value) in table {
            let origin = Origin::File(path.display().to_string());
            let key = canonical(&key).to_owned();
            if settings::find(&key).is_none() {
                return Err(ConfigError(format!("unknown setting {key} ({origin})")));
            }
            self.add_value(&key, value, origin)?;
        }
        Ok(sections)
    }

    pub fn add_string(
        &mut self,
        name: &str,
        value: &str,
        origin: Origin,
    ) -> Result<(), ConfigError> {
        let key = canonical(name).to_owned();
        if settings::find(&key).is_none() {
            return Err(ConfigError(format!("unknown setting {key} ({origin})")));
        }
        self.add_value(&key, toml::Value::String(value.to_owned()), origin)
    }

    pub fn add_value(
        &mut self,
        key: &str,
        value: toml::Value,
        origin: Origin,
    ) -> Result<(), ConfigError> {
        self.values.insert(key.to_owned(), (value, origin));
        Ok(())
    }

    pub fn keys(&self) -> Vec<String> {
        self.values.keys().cloned().collect()
    }

    /// The value as text (TOML strings, numbers and booleans alike), or the
    /// setting's default.
    fn text(&self, key: &str) -> Result<(String, Option<&Origin>), ConfigError> {
        match self.values.get(key) {
            Some((value, origin)) => {
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    toml::Value::Array(items) => items
                        .iter()
                        .map(|v| {
                            v.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| v.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                    other => {
                        return Err(ConfigError(format!(
                            "invalid value for {key} ({origin}): unexpected {}",
                            other.type_str()
                        )))
                    }
                };
                Ok((text, Some(origin)))
            }
            None => {
                let default = settings::find(key).map(|s| s.default).unwrap_or("");
                Ok((default.to_owned(), None))
            }
        }
    }

    fn invalid(key: &str, origin: Option<&Origin>, text: &str, why: &str) -> ConfigError {
        let from = origin.map(|o| format!(" ({o})")).unwrap_or_default();
        ConfigError(format!("invalid value for {key}{from}: \"{text}\": {why}"))
    }

    pub fn parse<T: Parse>(&self, key: &str) -> Result<T, ConfigError> {
        let (text, origin) = self.text(key)?;
        T::parse(text.trim()).map_err(|why| Self::invalid(key, origin, &text, &why))
    }

    /// Like [`Raw::parse`], with an empty value meaning `None`.
    pub fn optional<T: Parse>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        let (text, origin) = self.text(key)?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        T::parse(text.trim())
            .map(Some)
            .map_err(|why| Self::invalid(key, origin, &text, &why))
    }

    pub fn string(&self, key: &str) -> Result<String, ConfigError> {
        Ok(self.text(key)?.0)
    }

    pub fn path(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        let text = self.text(key)?.0;
        Ok((!text.trim().is_empty()).then(|| PathBuf::from(text.trim())))
    }

    pub fn list(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let text = self.text(key)?.0;
        Ok(text
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect())
    }

    /// Seconds, fractional allowed, or a number with a unit: ms, s, min, h.
    pub fn duration(&self, key: &str) -> Result<Duration, ConfigError> {
        let (text, origin) = self.text(key)?;
        parse_duration(text.trim()).map_err(|why| Self::invalid(key, origin, &text, &why))
    }

    /// File permissions in octal, as `chmod` takes them.
    pub fn octal(&self, key: &str) -> Result<u32, ConfigError> {
        let (text, origin) = self.text(key)?;
        u32::from_str_radix(text.trim(), 8)
            .ok()
            .filter(|&mode| mode <= 0o777)
            .ok_or_else(|| {
                Self::invalid(
                    key,
                    origin,
                    &text,
                    "expected octal permissions, such as 0770",
                )
            })
    }

    /// Milliseconds (PgBouncer's unit for `tcp_user_timeout`), or a
    /// number with a unit.
    pub fn millis(&self, key: &str) -> Result<Duration, ConfigError> {
        let (text, origin) = self.text(key)?;
        let text = text.trim();
        let ms = text.chars().all(|c| c.is_ascii_digit() || c == '.');
        let parsed = if ms && !text.is_empty() {
            parse_duration(&format!("{text}ms"))
        } else {
            parse_duration(text)
        };
        parsed.map_err(|why| Self::invalid(key, origin, text, &why))
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| "expected seconds, or a number with ms, s, min or h".to_owned())?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit \"{other}\" (use ms, s, min or h)")),
    };
    Duration::try_from_secs_f64(number * scale).map_err(|e| e.to_string())
}

/// Settings types parsed from their text form.
pub trait Parse: Sized {
    fn parse(text: &str) -> Result<Self, String>;
}

impl Parse for usize {
    fn parse(text: &str) -> Result<Self, String> {
        usize::from_str(text).map_err(|_| "expected a non-negative integer".into())
    }
}

impl Parse for u32 {
    fn parse(text: &str) -> Result<Self, String> {
        u32::from_str(text).map_err(|_| "expected a non-negative integer".into())
    }
}

impl Parse for bool {
    fn parse(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err("expected true or false".into()),
        }
    }
}

impl Parse for SocketAddr {
    fn parse(text: &str) -> Result<Self, String> {
        let text = match text.strip_prefix("*:") {
            Some(port) => format!("0.0.0.0:{port}"),
            None => text.to_owned(),
        };
        SocketAddr::from_str(&text).map_err(|_| "expected an address like 127.0.0.1:6432".into())
    }
}

impl Parse for PoolMode {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "session" => Ok(PoolMode::Session),
            "transaction" => Ok(PoolMode::Transaction),
            "statement" => Err("statement mode is not supported; use transaction".into()),
            _ => Err("expected session or transaction".into()),
        }
    }
}

impl Parse for AuthType {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "trust" | "any" => Ok(AuthType::Trust),
            "cert" => Ok(AuthType::Cert),
            "plain" => Ok(AuthType::Plain),
            "md5" => Ok(AuthType::Md5),
            "scram-sha-256" => Ok(AuthType::ScramSha256),
            "hba" => Ok(AuthType::Hba),
            _ => Err("expected scram-sha-256, md5, plain, cert, trust or hba".into()),
        }
    }
}

impl Parse for LogFormat {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".into()),
        }
    }
}
