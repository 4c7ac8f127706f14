//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it: the stored
//! secret, and the server side of the exchange that authenticates clients.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

pub const MECHANISM: &str = "SCRAM-SHA-256";
/// With channel binding (RFC 5929 tls-server-end-point), over TLS only.
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";
const BINDING_TYPE: &str = "tls-server-end-point";
const NONCE_LEN: usize = 18;
/// The most PBKDF2 iterations pgdyno runs (about a second): for a server
/// that asks for more, or as `scram_iterations`.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// SASLprep where it applies, as PostgreSQL does; else the raw bytes.
fn normalize(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

/// PBKDF2-HMAC-SHA-256 with one block: SaltedPassword.
fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let password = normalize(password);
    let mut prev = hmac(&password, &[salt, &[0, 0, 0, 1]]);
    let mut out = prev;
    for _ in 1..iterations {
        prev = hmac(&password, &[&prev]);
        for (o, p) in out.iter_mut().zip(prev) {
            *o ^= p;
        }
    }
    out
}

impl ScramSecret {
    pub fn parse(text: &str) -> Option<ScramSecret> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramSecret {
            iterations: iterations.parse().ok().filter(|&i| i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// Derives a secret with a fresh random salt (once per password: it is
    /// thousands of HMACs).
    /// A new secret for `password`, with a random salt and `iterations`
    /// (`scram_iterations`).
    pub fn from_password(password: &str, iterations: u32) -> ScramSecret {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        Self::with_salt(password, &salt, iterations)
    }

    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        ScramKeys::from_password(password, salt, iterations).secret
    }

    /// Whether `password` is the one this secret was made from.
    pub fn verify_password(&self, password: &str) -> bool {
        Self::with_salt(password, &self.salt, self.iterations).stored_key == self.stored_key
    }

    /// A secret that no password matches, the same for a given user every
    /// time, so an unknown user is indistinguishable from a wrong password.
    /// The salt is keyed with a random per-process secret (PostgreSQL's
    /// mock_auth_nonce), so nobody can compute it to tell the user is unknown.
    /// `iterations`: those of the secrets pgdyno makes (`scram_iterations`),
    /// so that the count gives nothing away either.
    pub fn decoy(user: &str, iterations: u32) -> ScramSecret {
        static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(|| {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            key
        });
        let salt = hmac(key, &[b"pgdyno-decoy-", user.as_bytes()]);
        ScramSecret {
            iterations,
            salt: salt[..16].to_vec(),
            stored_key: sha256(&salt),
            server_key: salt,
        }
    }
}

/// Why an exchange failed: the client sent something malformed, or the
/// proof did not match.
#[derive(Debug, PartialEq, Eq)]
pub enum ScramError {
    Malformed(&'static str),
    WrongProof,
}

/// Channel binding as the server side sees it.
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// Not offered: no TLS, or a certificate without one hash.
    Unsupported,
    /// SCRAM-SHA-256-PLUS was offered; the client chose SCRAM-SHA-256.
    NotChosen,
    /// The client chose SCRAM-SHA-256-PLUS; our tls-server-end-point data.
    Chosen(&'a [u8]),
}

/// The server's state between its first and final messages.
pub struct ServerExchange {
    client_first_bare: String,
    server_first: String,
    /// What the client-final's `c=` must decode to: the GS2 header, plus
    /// the binding data when bound.
    binding_input: Vec<u8>,
    nonce: String,
}

impl ServerExchange {
    /// Takes client-first-message; returns the state and server-first-message.
    pub fn start(
        client_first: &[u8],
        secret: &ScramSecret,
        binding: Binding<'_>,
    ) -> Result<(Self, String), ScramError> {
        let text =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut parts = text.splitn(3, ',');
        let (flag, authzid) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let bare = parts
            .next()
            .ok_or(ScramError::Malformed("missing client-first-message-bare"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identity is not supported",
            ));
        }
        let data: &[u8] = match (flag, binding) {
            ("n", Binding::Chosen(_)) | ("y", Binding::Chosen(_)) => {
                return Err(ScramError::Malformed(
                    "SCRAM-SHA-256-PLUS chosen without channel binding",
                ))
            }
            ("n", _) | ("y", Binding::Unsupported) => &[],
            // A client that can bind thinks we cannot: a downgrade.
            ("y", Binding::NotChosen) => {
                return Err(ScramError::Malformed(
                    "channel binding negotiation error: the client supports channel binding \
                     and thinks the server does not, but this server does",
                ))
            }
            (p, Binding::Chosen(data)) if p.strip_prefix("p=") == Some(BINDING_TYPE) => data,
            (p, _) if p.starts_with("p=") => {
                return Err(ScramError::Malformed(
                    "unsupported channel binding type or mechanism",
                ))
            }
            _ => return Err(ScramError::Malformed("invalid GS2 header")),
        };
        let mut binding_input = format!("{flag},,").into_bytes();
        binding_input.extend_from_slice(data);
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(ScramError::Malformed("missing or invalid client nonce"))?;
        let mut raw = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        Ok((
            ServerExchange {
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
                binding_input,
                nonce,
            },
            server_first,
        ))
    }

    /// Takes client-final-message; on success returns server-final-message
    /// and the ClientKey the client proved it has.
    pub fn finish(
        self,
        client_final: &[u8],
        secret: &ScramSecret,
    ) -> Result<(String, [u8; 32]), ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("missing channel binding"))?;
        if B64.decode(binding).ok().as_deref() != Some(&self.binding_input[..]) {
            return Err(ScramError::Malformed("channel binding does not match"));
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("missing nonce"))?;
        if nonce != self.nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("invalid proof"))?;
        let auth_message = [
            self.client_first_bare.as_bytes(),
            b",",
            self.server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let signature = hmac(&secret.stored_key, &auth_message);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(signature) {
            *k ^= s;
        }
        if sha256(&client_key) != secret.stored_key {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&secret.server_key, &auth_message);
        Ok((format!("v={}", B64.encode(server_signature)), client_key))
    }
}

/// What a client's successful SCRAM login leaves us: its ClientKey and the
/// secret it was checked against. With these pgdyno can log in to a
/// PostgreSQL that stores the same secret, without ever knowing the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub client_key: [u8; 32],
    pub secret: ScramSecret,
}

/// Channel binding as a client chooses it (its GS2 header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientBinding {
    /// "n": no TLS.
    None,
    /// "y": could bind, but the server did not offer it.
    Unused,
    /// "p=tls-server-end-point" with the server certificate's hash.
    EndPoint(Vec<u8>),
}

impl ClientBinding {
    fn gs2_header(&self) -> &'static str {
        match self {
            ClientBinding::None => "n,,",
            ClientBinding::Unused => "y,,",
            ClientBinding::EndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    /// The `c=` attribute's value.
    fn encoded(&self) -> String {
        let mut input = self.gs2_header().as_bytes().to_vec();
        if let ClientBinding::EndPoint(data) = self {
            input.extend_from_slice(data);
        }
        B64.encode(input)
    }
}

/// What pgdyno proves a SCRAM login to PostgreSQL with.
pub enum KeyProof {
    /// A ClientKey (SCRAM pass-through): the server must hold this secret.
    Keys(ScramKeys),
    /// A password. Its PBKDF2 (thousands of HMACs) is done once per server
    /// secret (salt and iteration count) and kept in `cache`.
    Password {
        password: String,
        cache: Arc<KeyCache>,
    },
}

/// The keys a password gave for the server's last salt and iteration count.
#[derive(Debug, Default)]
pub struct KeyCache(Mutex<Option<ScramKeys>>);

impl KeyCache {
    /// The password changed: derive again at the next login.
    pub fn forget(&self) {
        *self.0.lock().unwrap() = None;
    }

    fn keys(&self, password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let mut cached = self.0.lock().unwrap();
        match &*cached {
            Some(k) if k.secret.salt == salt && k.secret.iterations == iterations => k.clone(),
            _ => {
                let keys = ScramKeys::from_password(password, salt, iterations);
                *cached = Some(keys.clone());
                keys
            }
        }
    }
}

impl ScramKeys {
    /// The keys a password gives with this salt and iteration count.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        ScramKeys {
            client_key,
            secret: ScramSecret {
                iterations,
                salt: salt.to_vec(),
                stored_key: sha256(&client_key),
                server_key: hmac(&salted, &[b"Server Key"]),
            },
        }
    }
}

/// The client side of SCRAM, toward PostgreSQL.
pub struct KeyExchange {
    proof: KeyProof,
    /// The keys in use, known once the server has said its salt.
    keys: Option<ScramKeys>,
    binding: ClientBinding,
    client_first_bare: String,
    nonce: String,
    auth_message: String,
}

impl KeyExchange {
    /// Returns the exchange and client-first-message.
    pub fn start(proof: KeyProof, binding: ClientBinding) -> (KeyExchange, String) {
        let mut raw = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut raw);
        let nonce = B64.encode(raw);
        let client_first_bare = format!("n=,r={nonce}");
        let message = format!("{}{client_first_bare}", binding.gs2_header());
        let exchange = KeyExchange {
            proof,
            keys: None,
            binding,
            client_first_bare,
            nonce,
            auth_message: String::new(),
        };
        (exchange, message)
    }

    /// Takes server-first-message; returns client-final-message.
    pub fn update(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let text =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in text.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = B64.decode(v).ok(),
                Some(("i", v)) => iterations = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let nonce = nonce
            .filter(|n| n.starts_with(&self.nonce) && n.len() > self.nonce.len())
            .ok_or(ScramError::Malformed("server nonce does not extend ours"))?;
        let (Some(salt), Some(iterations)) = (salt, iterations.filter(|&i| i > 0)) else {
            return Err(ScramError::Malformed("missing salt or iteration count"));
        };
        // PBKDF2 runs on a worker thread: a server asking for billions of
        // iterations would hold it for hours. PostgreSQL's default is 4096.
        if iterations > MAX_ITERATIONS {
            return Err(ScramError::Malformed(
                "the server asks for more than 1,000,000 SCRAM iterations",
            ));
        }
        let keys = match &self.proof {
            KeyProof::Keys(k) if k.secret.salt == salt && k.secret.iterations == iterations => {
                k.clone()
            }
            KeyProof::Keys(_) => {
                return Err(ScramError::Malformed(
                    "the server's SCRAM secret differs from the one in auth_file",
                ))
            }
            KeyProof::Password { password, cache } => cache.keys(password, &salt, iterations),
        };
        let without_proof = format!("c={},r={nonce}", self.binding.encoded());
        self.auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = hmac(&keys.secret.stored_key, &[self.auth_message.as_bytes()]);
        let mut proof = keys.client_key;
        for (p, s) in proof.iter_mut().zip(signature) {
            *p ^= s;
        }
        self.keys = Some(keys);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final-message.
    pub fn finish(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let keys = self.keys.as_ref().ok_or(ScramError::WrongProof)?;
        let expected = hmac(&keys.secret.server_key, &[self.auth_message.as_bytes()]);
        let given = std::str::from_utf8(server_final)
            .ok()
            .and_then(|t| t.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok());
        match given {
            Some(g) if super::constant_time_eq(&g, &expected) => Ok(()),
            _ => Err(ScramError::WrongProof),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    #[test]
    fn parses_postgres_secrets() {
        let text = postgres_protocol::password::scram_sha_256(b"pencil");
        let secret = ScramSecret::parse(&text).unwrap();
        assert!(secret.verify_password("pencil"));
        assert!(!secret.verify_password("pencils"));
        assert!(ScramSecret::parse("SCRAM-SHA-256$x:AAAA$AAAA:AAAA").is_none());
        assert!(ScramSecret::parse("md5abc").is_none());
    }

    fn exchange(client_password: &str, secret: &ScramSecret) -> Result<(), ScramError> {
        let mut client =
            ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let (server, server_first) =
            ServerExchange::start(client.message(), secret, Binding::Unsupported)?;
        client.update(server_first.as_bytes()).unwrap();
        let (server_final, _key) = server.finish(client.message(), secret)?;
        client
            .finish(server_final.as_bytes())
            .expect("client accepts our server signature");
        Ok(())
    }

    #[test]
    fn authenticates_a_real_client() {
        let secret = ScramSecret::from_password("s3cret", 4096);
        assert_eq!(exchange("s3cret", &secret), Ok(()));
        assert_eq!(exchange("wrong", &secret), Err(ScramError::WrongProof));
        assert_eq!(
            exchange("s3cret", &ScramSecret::decoy("bob", 4096)),
            Err(ScramError::WrongProof)
        );
    }

    #[test]
    fn key_exchange_logs_in_without_the_password() {
        let secret = ScramSecret::from_password("hunter2", 4096);
        // A client logs in to us; we keep its ClientKey.
        let mut client = ScramSha256::new(b"hunter2", ChannelBinding::unsupported());
        let (server, first) =
            ServerExchange::start(client.message(), &secret, Binding::Unsupported).unwrap();
        client.update(first.as_bytes()).unwrap();
        let (_, client_key) = server.finish(client.message(), &secret).unwrap();
        // We log in to a server holding the same secret with that key.
        let keys = ScramKeys {
            client_key,
            secret: secret.clone(),
        };
        let (mut ours, message) = KeyExchange::start(KeyProof::Keys(keys), ClientBinding::None);
        let (server, first) =
            ServerExchange::start(message.as_bytes(), &secret, Binding::Unsupported).unwrap();
        let last = ours.update(first.as_bytes()).unwrap();
        let (server_final, _) = server.finish(last.as_bytes(), &secret).unwrap();
        assert_eq!(ours.finish(server_final.as_bytes()), Ok(()));
        assert!(ours.finish(b"v=AAAA").is_err());
    }

    #[test]
    fn rejects_malformed_messages() {
        let secret = ScramSecret::from_password("x", 4096);
        assert!(ServerExchange::start(b"garbage", &secret, Binding::Unsupported).is_err());
        assert!(ServerExchange::start(b"n,,n=,r=", &secret, Binding::Unsupported).is_err());
        assert!(ServerExchange::start(b"n,a=bob,n=,r=abc", &secret, Binding::Unsupported).is_err());
        let (server, _) =
            ServerExchange::start(b"n,,n=,r=abc", &secret, Binding::Unsupported).unwrap();
        assert!(server.finish(b"c=biws,r=abc,p=AAAA", &secret).is_err());
    }

    /// A real client (postgres-protocol) binding to our certificate.
    fn bound(client: ChannelBinding, ours: Binding<'_>) -> Result<(), ScramError> {
        let secret = ScramSecret::from_password("pw", 4096);
        let mut client = ScramSha256::new(b"pw", client);
        let (server, first) = ServerExchange::start(client.message(), &secret, ours)?;
        client.update(first.as_bytes()).unwrap();
        let (last, _) = server.finish(client.message(), &secret)?;
        client.finish(last.as_bytes()).unwrap();
        Ok(())
    }

    #[test]
    fn channel_binding_checks_the_certificate_hash() {
        let hash = [7u8; 32];
        let cb = || ChannelBinding::tls_server_end_point(hash.to_vec());
        assert_eq!(bound(cb(), Binding::Chosen(&hash)), Ok(()));
        // The client saw another certificate: a man in the middle.
        assert!(bound(cb(), Binding::Chosen(&[8u8; 32])).is_err());
        // PLUS chosen without binding, and binding without PLUS.
        assert!(bound(ChannelBinding::unsupported(), Binding::Chosen(&hash)).is_err());
        assert!(bound(cb(), Binding::NotChosen).is_err());
        // "y" (client could bind) while we offered PLUS: a downgrade.
        assert!(bound(ChannelBinding::unrequested(), Binding::NotChosen).is_err());
        assert_eq!(
            bound(ChannelBinding::unrequested(), Binding::Unsupported),
            Ok(())
        );
        assert_eq!(
            bound(ChannelBinding::unsupported(), Binding::NotChosen),
            Ok(())
        );
    }

    #[test]
    fn key_exchange_binds_to_the_channel() {
        let secret = ScramSecret::from_password("pw", 4096);
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
        let (server, first) =
            ServerExchange::start(client.message(), &secret, Binding::Unsupported).unwrap();
        client.update(first.as_bytes()).unwrap();
        let (_, client_key) = server.finish(client.message(), &secret).unwrap();
        let keys = ScramKeys {
            client_key,
            secret: secret.clone(),
        };
        let hash = [3u8; 48];
        let (mut ours, message) =
            KeyExchange::start(KeyProof::Keys(keys), ClientBinding::EndPoint(hash.to_vec()));
        let (server, first) =
            ServerExchange::start(message.as_bytes(), &secret, Binding::Chosen(&hash)).unwrap();
        let last = ours.update(first.as_bytes()).unwrap();
        let (server_final, _) = server.finish(last.as_bytes(), &secret).unwrap();
        assert_eq!(ours.finish(server_final.as_bytes()), Ok(()));
    }

    #[test]
    fn password_logins_derive_keys_once_per_server_secret() {
        let cache = Arc::new(KeyCache::default());
        let login = |password: &str, secret: &ScramSecret| -> Result<(), ScramError> {
            let proof = KeyProof::Password {
                password: password.into(),
                cache: cache.clone(),
            };
            let (mut ours, first) = KeyExchange::start(proof, ClientBinding::None);
            let (server, server_first) =
                ServerExchange::start(first.as_bytes(), secret, Binding::Unsupported)?;
            let last = ours.update(server_first.as_bytes())?;
            let (server_final, _) = server.finish(last.as_bytes(), secret)?;
            ours.finish(server_final.as_bytes())
        };
        let cached = || cache.0.lock().unwrap().as_ref().map(|k| k.secret.clone());
        let secret = ScramSecret::from_password("pw", 4096);
        assert_eq!(login("pw", &secret), Ok(()));
        assert_eq!(cached(), Some(secret.clone()));
        // From the cache this time.
        assert_eq!(login("pw", &secret), Ok(()));
        // The password was set again on the server: a new salt, new keys.
        let again = ScramSecret::from_password("pw", 4096);
        assert_eq!(login("pw", &again), Ok(()));
        assert_eq!(cached(), Some(again.clone()));
        assert_eq!(
            login("wrong", &ScramSecret::from_password("other", 4096)),
            Err(ScramError::WrongProof)
        );
    }
}
