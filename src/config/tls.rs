//! TLS settings as read, for both sides: libpq's sslmode, where the
//! certificates are, which protocol versions. Turning them into rustls
//! configurations (and failing on a bad file) is [`crate::tls`]'s job.

use std::path::PathBuf;

use super::value::{Parse, Raw};
use super::ConfigError;

/// libpq's sslmode, in increasing strictness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    /// Toward PostgreSQL pgdyno treats `allow` as `prefer`: it never stays
    /// in plaintext when the server offers TLS.
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a connection without TLS is refused.
    pub fn requires_tls(self) -> bool {
        self >= SslMode::Require
    }
}

impl Parse for SslMode {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(
                    "expected disable, allow, prefer, require, verify-ca or verify-full".into(),
                )
            }
        })
    }
}

/// libpq's `channel_binding`, for SCRAM logins to PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    Disable,
    Prefer,
    Require,
}

impl Parse for ChannelBinding {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "disable" => Ok(ChannelBinding::Disable),
            "prefer" => Ok(ChannelBinding::Prefer),
            "require" => Ok(ChannelBinding::Require),
            _ => Err("expected disable, prefer or require".into()),
        }
    }
}

/// The cipher suites offered: PgBouncer's `client_tls_ciphers` and
/// `server_tls_ciphers`. Its keywords (`default`, `secure`, `fast`,
/// `normal`, `compat`, `legacy`, `all`) all mean every suite rustls has:
/// its ECDHE AEAD suites, which each of those OpenSSL lists includes (the
/// older suites they add, rustls does not speak). Otherwise a list of suite
/// names, OpenSSL's or IANA's; as with OpenSSL, TLS 1.2 names restrict the
/// TLS 1.2 suites and TLS 1.3 names the TLS 1.3 ones, and a version none of
/// whose suites is named keeps them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ciphers {
    /// As written (SHOW CONFIG).
    pub text: String,
    /// rustls' names of the suites chosen, with whether each is TLS 1.3;
    /// empty: every suite.
    pub only: Vec<(&'static str, bool)>,
}

/// The suites rustls (ring) has: its name, OpenSSL's, whether TLS 1.3.
const SUITES: [(&str, &str, bool); 9] = [
    ("TLS13_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384", true),
    ("TLS13_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256", true),
    (
        "TLS13_CHACHA20_POLY1305_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
        true,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        false,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        false,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        false,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        false,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        false,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-RSA-CHACHA20-POLY1305",
        false,
    ),
];

impl Parse for Ciphers {
    fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let keyword = matches!(
            trimmed.to_ascii_lowercase().as_str(),
            "default" | "secure" | "fast" | "normal" | "compat" | "legacy" | "all"
        );
        let mut only = Vec::new();
        if !keyword {
            let words = || trimmed.split([':', ',', ' ']).filter(|w| !w.is_empty());
            // OpenSSL's operators, and its group names (HIGH, aNULL...):
            // suite names all have a dash or an underscore.
            let expression = |w: &str| {
                w.starts_with(['!', '+', '-', '@']) || w.chars().all(|c| c.is_ascii_alphanumeric())
            };
            if let Some(word) = words().find(|w| expression(w)) {
                return Err(format!(
                    "OpenSSL cipher expressions ({word}) are not supported: \
                     name the suites, or use a keyword such as default"
                ));
            }
            for word in words() {
                let upper = word.to_ascii_uppercase();
                let found = SUITES
                    .iter()
                    .find(|(rustls, openssl, _)| upper == *rustls || upper == *openssl);
                match found {
                    Some(&(name, _, tls13)) => only.push((name, tls13)),
                    None => {
                        return Err(format!(
                            "{word} is not a cipher suite pgdyno has (it has: {})",
                            SUITES.map(|s| s.1).join(", ")
                        ))
                    }
                }
            }
            if only.is_empty() {
                return Err("no cipher suite given".into());
            }
        }
        Ok(Ciphers {
            text: trimmed.to_owned(),
            only,
        })
    }
}

/// The TLS versions allowed (rustls speaks only 1.2 and 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    pub tls12: bool,
    pub tls13: bool,
}

impl Parse for Protocols {
    /// PgBouncer's forms: `secure`, `all`, or a list of `tlsv1.2`, `tlsv1.3`.
    fn parse(text: &str) -> Result<Self, String> {
        let mut p = Protocols {
            tls12: false,
            tls13: false,
        };
        for word in text.split([',', ' ', ':']).filter(|w| !w.is_empty()) {
            match word.to_ascii_lowercase().as_str() {
                "secure" | "all" | "normal" => {
                    p.tls12 = true;
                    p.tls13 = true;
                }
                "tlsv1.2" => p.tls12 = true,
                "tlsv1.3" => p.tls13 = true,
                "legacy" | "tlsv1" | "tlsv1.0" | "tlsv1.1" => {
                    return Err(format!("{word} is not supported: TLS 1.2 and 1.3 only"))
                }
                _ => return Err("expected secure, all, or a list of tlsv1.2, tlsv1.3".into()),
            }
        }
        if !(p.tls12 || p.tls13) {
            return Err("no protocol given".into());
        }
        Ok(p)
    }
}

/// PEM from a file or from the setting's value itself (an env var holding
/// the PEM text: a dyno has no place for files).
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Text { setting: &'static str, text: String },
}

impl Pem {
    /// Where it came from, for error messages.
    pub fn origin(&self) -> String {
        match self {
            Pem::File(p) => p.display().to_string(),
            Pem::Text { setting, .. } => setting.to_string(),
        }
    }

    pub fn read(&self) -> Result<Vec<u8>, ConfigError> {
        match self {
            Pem::File(p) => std::fs::read(p)
                .map_err(|e| ConfigError(format!("cannot read {}: {e}", p.display()))),
            Pem::Text { text, .. } => Ok(text.as_bytes().to_vec()),
        }
    }
}

/// Never prints key material.
impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pem::File(p) => write!(f, "File({})", p.display()),
            Pem::Text { setting, .. } => write!(f, "Text(from {setting})"),
        }
    }
}

/// TLS between clients and pgdyno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub sslmode: SslMode,
    pub cert: Option<Pem>,
    pub key: Option<Pem>,
    /// CA for client certificates (verify-ca, verify-full).
    pub ca: Option<Pem>,
    pub protocols: Protocols,
    pub ciphers: Ciphers,
}

/// TLS between pgdyno and PostgreSQL: defaults for every upstream, which
/// its URL's `sslmode`, `sslrootcert`, `sslcert`, `sslkey` override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub sslmode: SslMode,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub protocols: Protocols,
    pub ciphers: Ciphers,
}

/// A PEM setting given as `<name>_file` or `<name>_pem`, not both.
fn pem(raw: &Raw, name: &'static str) -> Result<Option<Pem>, ConfigError> {
    let file_key = format!("{name}_file");
    let pem_key = format!("{name}_pem");
    let file = raw.path(&file_key)?;
    let text = raw.string(&pem_key)?;
    match (file, text.trim().is_empty()) {
        (Some(_), false) => Err(ConfigError(format!(
            "set {file_key} or {pem_key}, not both"
        ))),
        (Some(f), true) => Ok(Some(Pem::File(f))),
        (None, false) => Ok(Some(Pem::Text {
            setting: match name {
                "client_tls_cert" => "client_tls_cert_pem",
                "client_tls_key" => "client_tls_key_pem",
                _ => "client_tls_ca_pem",
            },
            text,
        })),
        (None, true) => Ok(None),
    }
}

pub fn client(raw: &Raw) -> Result<ClientTls, ConfigError> {
    let tls = ClientTls {
        sslmode: raw.parse("client_tls_sslmode")?,
        cert: pem(raw, "client_tls_cert")?,
        key: pem(raw, "client_tls_key")?,
        ca: pem(raw, "client_tls_ca")?,
        protocols: raw.parse("client_tls_protocols")?,
        ciphers: raw.parse("client_tls_ciphers")?,
    };
    if tls.sslmode != SslMode::Disable && (tls.cert.is_none() || tls.key.is_none()) {
        return Err(ConfigError(format!(
            "client_tls_sslmode = {} needs a certificate and its key: set client_tls_cert_file \
             and client_tls_key_file (or client_tls_cert_pem and client_tls_key_pem)",
            tls.sslmode.name()
        )));
    }
    if tls.sslmode >= SslMode::VerifyCa && tls.ca.is_none() {
        return Err(ConfigError(format!(
            "client_tls_sslmode = {} checks client certificates: set client_tls_ca_file \
             (or client_tls_ca_pem)",
            tls.sslmode.name()
        )));
    }
    Ok(tls)
}

pub fn server(raw: &Raw) -> Result<ServerTls, ConfigError> {
    Ok(ServerTls {
        sslmode: raw.parse("server_tls_sslmode")?,
        ca_file: raw.path("server_tls_ca_file")?,
        cert_file: raw.path("server_tls_cert_file")?,
        key_file: raw.path("server_tls_key_file")?,
        protocols: raw.parse("server_tls_protocols")?,
        ciphers: raw.parse("server_tls_ciphers")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_lists_name_suites_by_openssl_or_iana_names() {
        for keyword in ["default", "fast", "HIGH-compat-less-typo"] {
            let parsed = Ciphers::parse(keyword);
            match keyword {
                "HIGH-compat-less-typo" => assert!(parsed.is_err(), "{keyword}"),
                _ => assert_eq!(parsed.unwrap().only, []),
            }
        }
        let list = Ciphers::parse("ECDHE-ECDSA-CHACHA20-POLY1305:TLS_AES_128_GCM_SHA256, tls_ecdhe_rsa_with_aes_256_gcm_sha384").unwrap();
        assert_eq!(
            list.only,
            [
                ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", false),
                ("TLS13_AES_128_GCM_SHA256", true),
                ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", false),
            ]
        );
        let err = Ciphers::parse("HIGH:!aNULL").unwrap_err();
        assert!(err.contains("expressions"), "{err}");
        let err = Ciphers::parse("AES128-SHA").unwrap_err();
        assert!(err.contains("not a cipher suite"), "{err}");
    }

    #[test]
    fn parses_modes_and_protocols() {
        assert_eq!(SslMode::parse("verify-full"), Ok(SslMode::VerifyFull));
        assert!(SslMode::parse("verify_full").is_err());
        assert!(SslMode::Require.requires_tls() && !SslMode::Prefer.requires_tls());
        let both = Protocols {
            tls12: true,
            tls13: true,
        };
        assert_eq!(Protocols::parse("secure"), Ok(both));
        assert_eq!(Protocols::parse("tlsv1.2,tlsv1.3"), Ok(both));
        assert_eq!(
            Protocols::parse("tlsv1.3"),
            Ok(Protocols {
                tls12: false,
                tls13: true
            })
        );
        assert!(Protocols::parse("tlsv1.1").is_err());
        assert!(Protocols::parse("").is_err());
    }

    #[test]
    fn pem_text_is_never_printed() {
        let pem = Pem::Text {
            setting: "client_tls_key_pem",
            text: "-----BEGIN PRIVATE KEY----- secret".into(),
        };
        assert!(!format!("{pem:?}").contains("secret"));
    }
}
